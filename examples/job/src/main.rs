//! `job`: a `wasi:cli/command` that computes a known result and exits 0.
//!
//! With no arguments (or a number) it sums the primes below the limit
//! (default 100000) and prints `sum=<n>`; for the default the answer is
//! 454396537. Other modes let tests look at the sandbox from inside:
//! - `--fail`: print to stderr and exit with failure (restart policies;
//!   WASI 0.2's `exit` carries only success or failure, reported as 1);
//! - `--env`: print every environment variable it can see;
//! - `--cat PATH`: print a file; `--write PATH TEXT`: write one;
//! - `--spin`: print `tick <n>` forever (a long-running worker);
//! - `--sleep SECS`: sleep, blocked in the host rather than spinning;
//! - `--connect HOST:PORT`: open a TCP connection (the sandbox refuses it).

use std::process::ExitCode;

const DEFAULT_LIMIT: u64 = 100_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["--fail", ..] => {
            eprintln!("failing on purpose");
            ExitCode::FAILURE
        }
        ["--env", ..] => {
            for (key, value) in std::env::vars() {
                println!("{key}={value}");
            }
            ExitCode::SUCCESS
        }
        ["--cat", path, ..] => report(std::fs::read_to_string(path).map(|text| print!("{text}"))),
        ["--write", path, text, ..] => report(std::fs::write(path, text)),
        ["--spin", ..] => spin(),
        ["--sleep", seconds, ..] => {
            let seconds = seconds.parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            ExitCode::SUCCESS
        }
        ["--connect", address, ..] => {
            report(std::net::TcpStream::connect(address).map(|_| println!("connected")))
        }
        _ => {
            let limit = words
                .iter()
                .find_map(|word| word.parse::<u64>().ok())
                .unwrap_or(DEFAULT_LIMIT);
            println!("sum={}", sum_primes_below(limit));
            ExitCode::SUCCESS
        }
    }
}

fn report(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn spin() -> ExitCode {
    let mut tick = 0u64;
    loop {
        tick += 1;
        if tick.is_multiple_of(1_000_000) {
            println!("tick {}", tick / 1_000_000);
        }
        std::hint::black_box(tick);
    }
}

fn sum_primes_below(limit: u64) -> u64 {
    (2..limit).filter(|&n| is_prime(n)).sum()
}

fn is_prime(n: u64) -> bool {
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}
