//! Hostile peers, generated: whatever bytes a peer sends, frames decode or fail cleanly, and an
//! agent answers with an error or a result, never panics, and writes nothing outside the root
//! it is confined to.

mod common;

use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;
use sync_core::agent::{AgentOptions, serve};
use sync_core::proto::{Begin, DestBase, Message, read_frame, send_hello, write_frame};

fn options(root: &Path) -> AgentOptions {
    AgentOptions {
        version: "0.0.0-fuzz".to_owned(),
        threads: 2,
        confine: Some(root.to_owned()),
        home: None,
        cache_dir: None,
        token: None,
        worker_plugin: None,
    }
}

/// A plain sync into `dest` (relative to the agent's root).
fn begin(dest: &str) -> Message {
    Message::Begin(Begin {
        dest: dest.to_owned(),
        ignore: vec![],
        dry_run: false,
        fsync: false,
        adopt: false,
        lock_wait_ms: 0,
        base: DestBase::Cwd,
        delta_min: 1 << 16,
        leaves: false,
        local_sources: false,
    })
}

/// Every path below `dir`, relative to it, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = common::walkdir(dir)
        .iter()
        .skip(1)
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any byte string: frames come out whole or as an error, and each decoded message
    /// encodes back to a frame that decodes to the same message.
    #[test]
    fn frames_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut input = Cursor::new(bytes);
        while let Ok((msg, _)) = read_frame(&mut input) {
            let mut again = Vec::new();
            write_frame(&mut again, &msg).unwrap();
            let (back, _) = read_frame(&mut Cursor::new(again)).unwrap();
            prop_assert_eq!(back, msg);
        }
    }

    /// A valid handshake and `Begin`, then frames of random bytes (many decode as real
    /// messages: offers, manifests, data): the agent ends with a result or an error, and the
    /// only thing it may have created is the destination inside its root.
    #[test]
    fn agent_survives_random_frames(
        dest in "[a-z]{1,3}(/[a-z]{1,3})?",
        frames in proptest::collection::vec(
            (0u8..28, proptest::collection::vec(any::<u8>(), 0..80)),
            0..8,
        ),
    ) {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(top.path().join("canary"), b"untouched").unwrap();
        let mut input = Vec::new();
        send_hello(&mut input, "0.0.0-fuzz").unwrap();
        write_frame(&mut input, &begin(&dest)).unwrap();
        for (variant, body) in frames {
            // A variant tag first, so most frames reach the decoder of a real message.
            input.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
            input.push(variant);
            input.extend_from_slice(&body);
        }
        let mut output = Vec::new();
        let _ = serve(Cursor::new(input), &mut output, &options(&root));
        prop_assert_eq!(
            std::fs::read(top.path().join("canary")).unwrap(),
            b"untouched".to_vec()
        );
        let outside: Vec<String> = listing(top.path())
            .into_iter()
            .filter(|p| p != "canary" && p != "root" && !p.starts_with("root/"))
            .collect();
        prop_assert!(outside.is_empty(), "written outside the root: {:?}", outside);
        for p in listing(&root) {
            let first = dest.split('/').next().unwrap();
            prop_assert!(p == first || p.starts_with(&format!("{first}/")), "unexpected {}", p);
        }
    }
}

/// The harness above reaches the session: a handshake, `Begin` and an `Offer` get the agent to
/// create the destination and ask for the manifest before the input ends.
#[test]
fn the_generated_session_reaches_the_agent() {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut input = Vec::new();
    send_hello(&mut input, "0.0.0-fuzz").unwrap();
    write_frame(&mut input, &begin("d")).unwrap();
    let offer = Message::Offer {
        digest: [7; 32],
        entries: 3,
    };
    write_frame(&mut input, &offer).unwrap();
    let mut output = Vec::new();
    let result = serve(Cursor::new(input), &mut output, &options(&root));
    assert!(result.is_err(), "the input ends mid-session");
    assert!(root.join("d").is_dir());
    let mut out = Cursor::new(output);
    let mut seen = Vec::new();
    let mut magic = [0u8; sync_core::proto::MAGIC.len()];
    std::io::Read::read_exact(&mut out, &mut magic).unwrap();
    while let Ok((m, _)) = read_frame(&mut out) {
        seen.push(m.name());
    }
    assert!(seen.contains(&"NeedManifest"), "{seen:?}");
}
