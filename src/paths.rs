//! The paths Portcullis answers itself on every route host (never forwarded).

/// Starts a sign-in: `?redirect_uri=/path` names where to come back to.
pub const SIGN_IN: &str = "/.portcullis/sign_in";
/// The OIDC redirect URI (`https://<route host>/.portcullis/callback` at the IdP).
pub const CALLBACK: &str = "/.portcullis/callback";
/// Ends the session here and at the IdP. Also the `Path` of the cookie that holds the
/// session's ID token for it, so no other request carries it.
pub const SIGN_OUT: &str = "/.portcullis/sign_out";
/// "You are signed out" (the IdP's post-logout redirect URI).
pub const SIGNED_OUT: &str = "/.portcullis/signed_out";
/// `portcullis tcp`'s sign-in: `?port=N&state=S` names its loopback listener, which gets
/// the session for TCP routes once the signed-in user confirms.
pub const CLI: &str = "/.portcullis/cli";
/// Who am I.
pub const WHOAMI: &str = "/.portcullis/";
/// The public keys that verify the assertion JWT.
pub const JWKS: &str = "/.well-known/portcullis/jwks.json";

/// Is `path` (normalized) one of Portcullis's own?
pub fn is_own(path: &str) -> bool {
    path == "/.portcullis"
        || path.starts_with("/.portcullis/")
        || path.starts_with("/.well-known/portcullis/")
}
