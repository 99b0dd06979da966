//! `signing_key`: read and checked when the config is compiled, so an unusable key is a
//! config error at its key, not a failure later.

/// An EC P-256 private key for `signing_key`, checked and held as PKCS#8 DER.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// What to run for a key Portcullis takes (README "signing_key").
const MAKE_ONE: &str =
    "make one with `openssl ecparam -name prime256v1 -genkey -noout -out signing_key.pem`";

impl SigningKey {
    /// The key as PKCS#8 DER.
    pub fn pkcs8(&self) -> &[u8] {
        &self.0
    }

    /// Reads a PEM EC P-256 private key, SEC1 (`EC PRIVATE KEY`, what `openssl ecparam -genkey`
    /// writes) or PKCS#8 (`PRIVATE KEY`); anything else is refused saying what it is.
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        use aws_lc_rs::signature::{
            EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as P256,
            ECDSA_P384_SHA384_FIXED_SIGNING as P384, ECDSA_P521_SHA512_FIXED_SIGNING as P521,
        };
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
        if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || pem.contains("Proc-Type: 4,ENCRYPTED")
        {
            return Err("the key is encrypted; Portcullis needs it unencrypted (`openssl pkcs8 -topk8 -nocrypt -in KEY -out signing_key.pem`)".into());
        }
        let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(k) => k,
            Err(_) if SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).is_ok() => {
                return Err(format!(
                    "this is a public key; signing_key is the private key ({MAKE_ONE})"
                ))
            }
            Err(_) => return Err(format!("no PEM private key found ({MAKE_ONE})")),
        };
        let other = |what: &str| {
            Err(format!(
                "this is {what}; signing_key must be an EC P-256 key (ES256) ({MAKE_ONE})"
            ))
        };
        let der = match &key {
            PrivateKeyDer::Pkcs1(_) => return other("an RSA key"),
            PrivateKeyDer::Sec1(k) => k.secret_sec1_der(),
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
            _ => return other("a key of a kind Portcullis does not read"),
        };
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(&P256, der) {
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| "the EC P-256 key cannot be used".to_string())?;
            return Ok(SigningKey(pkcs8.as_ref().to_vec()));
        }
        if EcdsaKeyPair::from_private_key_der(&P384, der).is_ok() {
            return other("an EC P-384 key");
        }
        if EcdsaKeyPair::from_private_key_der(&P521, der).is_ok() {
            return other("an EC P-521 key");
        }
        if aws_lc_rs::rsa::KeyPair::from_pkcs8(der).is_ok() {
            return other("an RSA key");
        }
        if Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).is_ok() {
            return other("an Ed25519 key");
        }
        other("not an EC P-256 private key (another curve or algorithm, or a damaged key)")
    }
}
