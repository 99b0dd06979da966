//! Command line: run | check | explain | secret | health | tcp.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Env, ProcessEnv};
use crate::explain::{decide, Answer, Request, Who};
use crate::policy::{ClaimValue, Outcome};
use crate::runtime::Runtime;

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "Identity-aware reverse proxy")]
pub struct Cli {
    /// Config file (YAML).
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the config as the server would at start; print `file:line:col: message` errors,
    /// or `ok` and then the warnings the server would log at start.
    Check {
        /// Print errors only (no `ok` line, no warnings).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Decide one request offline: prints `allow` or `deny` first, then the deciding rule.
    Explain(ExplainArgs),
    /// Print a fresh random 32-byte key, base64 (for `cookie_secret`).
    Secret,
    /// Open a TCP route (`from: tcp+https://HOST:PORT`) through Portcullis: relays stdin and
    /// stdout (ssh's ProxyCommand) or each connection on --listen; signs in when needed.
    Tcp(crate::tunnel_client::TcpArgs),
    /// Probe the admin listener's /readyz; exit 0 when ready.
    Health {
        /// Full URL of /readyz (default: from the config's metrics_address).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The request URL, such as https://openclaw.example.com/admin
    #[arg(long, required_unless_present = "diff")]
    pub url: Option<String>,
    /// Signed-in user's email; without it the request is anonymous.
    #[arg(long)]
    pub email: Option<String>,
    /// Comma-separated groups.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// A claim, `name=value` (repeatable); `name=a,b` makes a list claim.
    #[arg(long)]
    pub claim: Vec<String>,
    /// The user's subject (`sub`); defaults to the email.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Client IP address (for source_ip criteria).
    #[arg(long)]
    pub ip: Option<std::net::IpAddr>,
    /// Treat the email as unverified (`email_verified: false`).
    #[arg(long)]
    pub unverified: bool,
    /// Compare two configs: print each decision that changes between them (their tests, and
    /// requests made from what their policies name); exit 0 when none does, 2 when some do.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with = "url")]
    pub diff: Option<Vec<PathBuf>>,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Secret) => {
            let mut key = [0u8; 32];
            if aws_lc_rs::rand::fill(&mut key).is_err() {
                eprintln!("error: no randomness available");
                return ExitCode::from(1);
            }
            use base64::Engine;
            println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
            ExitCode::SUCCESS
        }
        Some(Command::Check { quiet }) => {
            let Some(path) = config_path(&cli.config) else {
                return ExitCode::from(1);
            };
            match Runtime::load(&path, &ProcessEnv) {
                Ok(rt) => {
                    if !quiet {
                        println!(
                            "{}: ok ({} routes)",
                            path.display(),
                            rt.routes.iter().count()
                        );
                        // What the server would log at start: seen before a reload, not after.
                        for w in &rt.warnings {
                            println!("warning: {w}");
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(errs) => {
                    println!("{errs}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Explain(args)) => {
            if args.diff.is_some() {
                // The two configs are named by --diff; --config is not needed.
                return explain(Path::new(""), &ProcessEnv, &args);
            }
            let Some(path) = config_path(&cli.config) else {
                return ExitCode::from(1);
            };
            explain(&path, &ProcessEnv, &args)
        }
        Some(Command::Health { url }) => health(cli.config.as_deref(), url),
        Some(Command::Tcp(args)) => crate::tunnel_client::run(args),
        None => {
            let Some(path) = config_path(&cli.config) else {
                return ExitCode::from(1);
            };
            serve(&path)
        }
    }
}

fn config_path(p: &Option<PathBuf>) -> Option<PathBuf> {
    match p {
        Some(p) => Some(p.clone()),
        None => {
            eprintln!("error: no config file: pass --config PATH or set PORTCULLIS_CONFIG");
            None
        }
    }
}

/// Result of `explain`: the text to print and the exit code.
pub fn explain_text(
    path: &Path,
    env: &dyn Env,
    args: &ExplainArgs,
) -> Result<(String, Outcome), String> {
    let compiled = config::load(path, env).map_err(|e| e.to_string())?;
    let routes = crate::route::RouteTable::new(compiled.routes);
    let url = args.url.as_deref().ok_or("--url is needed")?;
    let who = match (&args.email, &args.user) {
        (None, None) => None,
        _ => {
            let mut claims = std::collections::BTreeMap::new();
            for c in &args.claim {
                let (k, v) = c
                    .split_once('=')
                    .ok_or_else(|| format!("--claim: `{c}` is not name=value"))?;
                let v = if v.contains(',') {
                    ClaimValue::List(v.split(',').map(str::to_string).collect())
                } else {
                    ClaimValue::Str(v.to_string())
                };
                claims.insert(k.to_string(), v);
            }
            Some(Who {
                email: args.email.clone(),
                verified: !args.unverified,
                user: args.user.clone(),
                groups: args.groups.clone(),
                claims,
            })
        }
    };
    let req = Request::new(url, &args.method, args.ip, who).map_err(|e| format!("--url: {e}"))?;
    let v = decide(&routes, &req);
    let source = path.display().to_string();
    let Some((name, line)) = &v.route else {
        return Ok((
            format!(
                "deny\tno route matches {}{}: Portcullis answers 404",
                req.host, req.path
            ),
            Outcome::Deny,
        ));
    };
    let rule = match &v.rule {
        Some(r) => format!("{} at {source}:{}:{}", r.key, r.pos.line, r.pos.col),
        None => "no rule".to_string(),
    };
    let (word, outcome, note) = match v.answer {
        Answer::Allow => ("allow", Outcome::Allow, ""),
        Answer::Deny => ("deny", Outcome::Deny, " (403)"),
        Answer::SignIn => (
            "deny",
            Outcome::Unauthenticated,
            " (anonymous: a browser is sent to sign in, other clients get 401)",
        ),
    };
    let mut text = format!(
        "{word}\troute `{name}` at {source}:{line}\n\tdecided by: {rule}\n\treason: {}{note}",
        v.reason
    );
    if let Some(u) = &v.upstream {
        text.push_str(&format!("\n\tupstream: {u}"));
    }
    match &v.grant {
        Some((g, at)) => text.push_str(&format!(
            "\n\tgrant: {source}:{}:{} sets {g}",
            at.line, at.col
        )),
        None if v.answer == Answer::Allow => text.push_str("\n\tgrant: none"),
        None => {}
    }
    Ok((text, outcome))
}

/// `explain --diff OLD NEW`: every decision that differs between the two configs, one line
/// each (`URL as WHO: OLD → NEW`), over both configs' tests and the requests their policies
/// name (`crate::explain::probes`). Returns the lines; an error for a config that does not load.
pub fn diff_text(old: &Path, new: &Path, env: &dyn Env) -> Result<Vec<String>, String> {
    let load = |p: &Path| -> Result<(crate::route::RouteTable, Vec<crate::explain::Case>), String> {
        let c = config::load(p, env).map_err(|e| e.to_string())?;
        Ok((crate::route::RouteTable::new(c.routes), c.tests))
    };
    let (a, a_tests) = load(old)?;
    let (b, b_tests) = load(new)?;
    let mut requests: Vec<Request> = a_tests
        .iter()
        .chain(&b_tests)
        .map(|c| c.request.clone())
        .collect();
    requests.extend(crate::explain::probes(&a));
    requests.extend(crate::explain::probes(&b));
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    for r in requests {
        let key = format!("{} {} as {}", r.method, r.url, r.who());
        if !seen.insert(key.clone()) {
            continue;
        }
        let (va, vb) = (decide(&a, &r), decide(&b, &r));
        if va.effect() != vb.effect() {
            lines.push(format!(
                "{key}: {} → {}\t(old: {}; new: {})",
                va.answer.word(),
                vb.answer.word(),
                va.describe(&old.display().to_string()),
                vb.describe(&new.display().to_string()),
            ));
        }
    }
    Ok(lines)
}

fn explain(path: &Path, env: &dyn Env, args: &ExplainArgs) -> ExitCode {
    if let Some(d) = &args.diff {
        return match diff_text(&d[0], &d[1], env) {
            Ok(lines) if lines.is_empty() => ExitCode::SUCCESS,
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    match explain_text(path, env, args) {
        Ok((text, outcome)) => {
            println!("{text}");
            if outcome == Outcome::Allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn health(config: Option<&Path>, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(u) => u,
        None => {
            let Some(path) = config else {
                eprintln!("error: pass --url or --config");
                return ExitCode::from(1);
            };
            match config::load(path, &ProcessEnv) {
                Ok(c) => match c.settings.metrics_address {
                    Some(a) => format!("http://127.0.0.1:{}/readyz", a.port()),
                    None => {
                        eprintln!("error: the config sets no metrics_address to probe");
                        return ExitCode::from(1);
                    }
                },
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(crate::server::admin::probe(&url)) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("{url}: {code}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Starts logging as the config says (`RUST_LOG` wins), to standard error.
pub fn init_logging(settings: Option<&config::Settings>) {
    use tracing_subscriber::EnvFilter;
    let level = settings.map_or("info", |s| s.log_level.as_str());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = settings.is_some_and(|s| s.log_format == config::LogFormat::Json);
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

fn serve(path: &Path) -> ExitCode {
    let rt = match Runtime::load(path, &ProcessEnv) {
        Ok(rt) => rt,
        Err(errs) => {
            init_logging(None);
            eprintln!("{errs}");
            return ExitCode::from(1);
        }
    };
    init_logging(Some(&rt.settings));
    let tokio_rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    tokio_rt.block_on(async move {
        let handle = match crate::server::start(rt).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen");
                return ExitCode::from(1);
            }
        };
        crate::server::signals::run_until_stopped(&handle, path).await;
        handle.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
