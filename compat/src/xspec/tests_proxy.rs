//! Proxies: `--px` specs matched to the `via=` of `--tx` specs by [`resolve`].

use super::tests_valid::{count, px, some, tx};
use super::{Placement, ResolveError, XSpec, resolve};

type Case = (Vec<XSpec>, Vec<XSpec>, ResolveError, Option<&'static str>);

#[test]
fn resolve_matches_via_to_proxies() {
    let proxies = [
        px("id=box//ssh=host"),
        px("id=win//socket=192.168.1.102:8888"),
    ];
    let workers = [
        tx("4*popen//via=box//chdir=rdist"),
        tx("popen"),
        tx("popen//via=win"),
    ];
    let placed = resolve(&workers, &proxies).unwrap_or_default();
    let want = vec![
        Placement {
            spec: &workers[0],
            proxy: Some(&proxies[0]),
        },
        Placement {
            spec: &workers[1],
            proxy: None,
        },
        Placement {
            spec: &workers[2],
            proxy: Some(&proxies[1]),
        },
    ];
    assert_eq!(placed, want);
    assert_eq!(resolve(&[], &[]), Ok(vec![]));
}

#[test]
fn resolve_errors() {
    // (tx specs, px specs, error, hint)
    let cases: Vec<Case> = vec![
        (
            vec![tx("popen//via=bx")],
            vec![px("id=box//ssh=h")],
            ResolveError::UnknownVia {
                name: "bx".into(),
                spec: "popen//via=bx".into(),
                suggestion: some("box"),
                known: vec!["box".into()],
            },
            Some("did you mean `box`?"),
        ),
        (
            vec![tx("popen//via=zzz")],
            vec![px("id=box//ssh=h"), px("id=win//ssh=w")],
            ResolveError::UnknownVia {
                name: "zzz".into(),
                spec: "popen//via=zzz".into(),
                suggestion: None,
                known: vec!["box".into(), "win".into()],
            },
            Some("declared proxies are `box`, `win`"),
        ),
        (
            vec![tx("2*popen//via=p")],
            vec![],
            ResolveError::UnknownVia {
                name: "p".into(),
                spec: "2*popen//via=p".into(),
                suggestion: None,
                known: vec![],
            },
            Some("declare the proxy with `--px id=p//ssh=HOST`"),
        ),
        (
            vec![],
            vec![px("id=box//ssh=a"), px("id=box//ssh=b")],
            ResolveError::DuplicateProxyId { id: "box".into() },
            None,
        ),
        (
            vec![tx("ssh=h//id=box")],
            vec![px("id=box//ssh=a")],
            ResolveError::DuplicateId { id: "box".into() },
            Some("give each gateway its own `id=`, or drop `id=` for `gw0`, `gw1`, ..."),
        ),
        (
            vec![tx("popen//id=w"), tx("ssh=h//id=w")],
            vec![],
            ResolveError::DuplicateId { id: "w".into() },
            Some("give each gateway its own `id=`, or drop `id=` for `gw0`, `gw1`, ..."),
        ),
        (
            vec![XSpec {
                count: count(2),
                ..tx("popen//id=w")
            }],
            vec![],
            ResolveError::DuplicateId { id: "w".into() },
            Some("give each gateway its own `id=`, or drop `id=` for `gw0`, `gw1`, ..."),
        ),
        (
            vec![],
            vec![tx("ssh=h")],
            ResolveError::ProxyWithoutId {
                spec: "ssh=h".into(),
            },
            Some("name it, as in `--px id=NAME//ssh=HOST`"),
        ),
        (
            vec![],
            vec![tx("popen//id=p//via=q")],
            ResolveError::ProxyWithVia {
                spec: "popen//id=p//via=q".into(),
            },
            None,
        ),
    ];
    for (tx_specs, px_specs, want, hint) in cases {
        let error = match resolve(&tx_specs, &px_specs) {
            Ok(placed) => panic!("resolved {placed:?}, expected {want}"),
            Err(error) => error,
        };
        assert_eq!(error.hint().as_deref(), hint, "{error}");
        assert_eq!(error, want);
    }
}

#[test]
fn resolve_error_messages() {
    let cases = [
        (
            ResolveError::UnknownVia {
                name: "bx".into(),
                spec: "popen//via=bx".into(),
                suggestion: None,
                known: vec![],
            },
            "unknown proxy `bx` in `popen//via=bx`",
        ),
        (
            ResolveError::DuplicateProxyId { id: "box".into() },
            "duplicate proxy id `box`",
        ),
        (
            ResolveError::DuplicateId { id: "w".into() },
            "id `w` is used by more than one gateway",
        ),
        (
            ResolveError::ProxyWithoutId {
                spec: "ssh=h".into(),
            },
            "proxy `ssh=h` has no `id=`",
        ),
        (
            ResolveError::ProxyWithVia {
                spec: "popen//via=q".into(),
            },
            "proxy `popen//via=q` cannot use `via=`",
        ),
    ];
    for (error, want) in cases {
        assert_eq!(error.to_string(), want);
    }
}
