//! `tcp-echo`: raw TCP (`wasi:sockets`) through Flotilla's pod network,
//! with nothing but `std::net`.
//!
//! - `serve [PORT]` (default 7000) listens in the pod's namespace and
//!   sends every connection back what it sent, until it shuts down its
//!   side; one connection at a time (a guest has one thread).
//! - `send HOST:PORT TEXT` connects (HOST may be a Service name, a
//!   ClusterIP or a pod IP), sends TEXT, shuts down its sending side, and
//!   prints `echo: <answer>`; it exits 0 only if the answer is TEXT.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;

const DEFAULT_PORT: u16 = 7000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match words.as_slice() {
        ["serve"] => serve(DEFAULT_PORT),
        ["serve", port] => match port.parse() {
            Ok(port) => serve(port),
            Err(_) => Err(format!("not a port: {port}")),
        },
        ["send", address, text] => send(address, text),
        _ => Err("usage: tcp-echo serve [PORT] | tcp-echo send HOST:PORT TEXT".to_owned()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(port: u16) -> Result<(), String> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("listening on {port}: {e}"))?;
    println!("listening on {port}");
    for stream in listener.incoming() {
        match stream.and_then(echo) {
            Ok(bytes) => println!("echoed {bytes} bytes"),
            Err(error) => eprintln!("connection failed: {error}"),
        }
    }
    Ok(())
}

/// Sends back what arrives until the client stops sending.
fn echo(mut stream: TcpStream) -> std::io::Result<usize> {
    let mut total = 0;
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        stream.write_all(&buffer[..read])?;
        total += read;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(total)
}

fn send(address: &str, text: &str) -> Result<(), String> {
    let mut stream =
        TcpStream::connect(address).map_err(|e| format!("connecting to {address}: {e}"))?;
    stream
        .write_all(text.as_bytes())
        .and_then(|()| stream.shutdown(Shutdown::Write))
        .map_err(|e| format!("sending to {address}: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading from {address}: {e}"))?;
    println!("echo: {answer}");
    if answer == text {
        Ok(())
    } else {
        Err(format!("{address} answered {answer:?}, not {text:?}"))
    }
}
