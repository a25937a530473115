//! A stand-in for `plughost-host` that opens the handshake with what a host of another protocol
//! version would send, for the tests of the version check (`ManagerConfig::host_binary` names it).
//!
//! `PH_FAKE=hello-protocol`: a well-formed `Hello` frame that says protocol 2;
//! `PH_FAKE=frame-version`: a `Hello` in a frame whose header says version 2.
//! Then it waits until the service closes the channel (its stdin) or kills it.

use std::os::fd::AsFd;

use plughost_wire::{encode, Hello, HostMsg, PROTOCOL_VERSION};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .iter()
        .position(|a| a == "--name")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default();
    let mode = std::env::var("PH_FAKE").unwrap_or_default();
    let hello = HostMsg::Hello(Hello {
        protocol: if mode == "hello-protocol" {
            PROTOCOL_VERSION + 1
        } else {
            PROTOCOL_VERSION
        },
        pid: std::process::id(),
        plugin: name,
    });
    let mut frame = Vec::new();
    if let Err(e) = encode(&hello, &mut frame) {
        eprintln!("fake-host: cannot encode Hello: {e}");
        std::process::exit(2);
    }
    if mode == "frame-version" {
        frame[2] = PROTOCOL_VERSION + 1;
    }
    let stdin = std::io::stdin();
    if let Err(e) = rustix::net::send(stdin.as_fd(), &frame, rustix::net::SendFlags::empty()) {
        eprintln!("fake-host: send: {e}");
        std::process::exit(2);
    }
    let mut buf = [0u8; 65536];
    while let Ok(n) = rustix::net::recv(stdin.as_fd(), &mut buf, rustix::net::RecvFlags::empty()) {
        if n.0 == 0 {
            break;
        }
    }
}
