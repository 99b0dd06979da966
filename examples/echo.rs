//! The echo upstream as a program, for the end-to-end suite, `scripts/demo` and the benchmarks:
//! `cargo run --example echo -- 127.0.0.1:9000 [name]` (it prints the address it listens on).
//! What it answers is described in `tests/support/echo.rs`.

#[path = "../tests/support/echo.rs"]
mod echo;

use echo::*;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let name = args.next().unwrap_or_else(|| "echo".into());
    let l = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo: cannot bind {addr}: {e}");
            std::process::exit(1);
        }
    };
    let echo = Echo::serve(l, &name, None).await;
    // The first line on stdout is the bound address, for scripts.
    println!("{}", echo.addr);
    std::future::pending::<()>().await;
}
