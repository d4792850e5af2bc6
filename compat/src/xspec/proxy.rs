//! `--px` proxies and the `via=NAME` of worker specs: every name must match one proxy `id=`.

use super::XSpec;
use super::keys;

/// A worker spec with the proxy its `via=` names, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    pub spec: &'a XSpec,
    pub proxy: Option<&'a XSpec>,
}

/// Why a set of `--tx` and `--px` specs does not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("proxy `{spec}` has no `id=`")]
    ProxyWithoutId { spec: String },
    #[error("proxy `{spec}` cannot use `via=`")]
    ProxyWithVia { spec: String },
    #[error("duplicate proxy id `{id}`")]
    DuplicateProxyId { id: String },
    #[error("unknown proxy `{name}` in `{spec}`")]
    UnknownVia {
        name: String,
        spec: String,
        suggestion: Option<String>,
        /// The declared proxy ids, for the hint.
        known: Vec<String>,
    },
    #[error("id `{id}` is used by more than one gateway")]
    DuplicateId { id: String },
}

impl ResolveError {
    /// What to do about the error, as one lowercase line without the `hint:` prefix.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ResolveError::ProxyWithoutId { .. } => {
                "name it, as in `--px id=NAME//ssh=HOST`".to_owned()
            }
            ResolveError::UnknownVia {
                suggestion: Some(suggestion),
                ..
            } => format!("did you mean `{suggestion}`?"),
            ResolveError::UnknownVia { name, known, .. } if known.is_empty() => {
                format!("declare the proxy with `--px id={name}//ssh=HOST`")
            }
            ResolveError::UnknownVia { known, .. } => {
                let known: Vec<String> = known.iter().map(|id| format!("`{id}`")).collect();
                format!("declared proxies are {}", known.join(", "))
            }
            ResolveError::DuplicateId { .. } => {
                "give each gateway its own `id=`, or drop `id=` for `gw0`, `gw1`, ...".to_owned()
            }
            _ => return None,
        })
    }
}

/// Matches each `--tx` spec's `via=` to a `--px` proxy, in `tx` order.
///
/// # Errors
/// A proxy without `id=` or with `via=`, two proxies with one id, a `via=` naming no proxy (with
/// a did-you-mean), or an `id=` shared by two gateways (proxies and workers, counting `N*`).
pub fn resolve<'a>(tx: &'a [XSpec], px: &'a [XSpec]) -> Result<Vec<Placement<'a>>, ResolveError> {
    let mut proxies: Vec<(&str, &XSpec)> = Vec::with_capacity(px.len());
    for proxy in px {
        let Some(id) = proxy.id.as_deref() else {
            let spec = proxy.to_string();
            return Err(ResolveError::ProxyWithoutId { spec });
        };
        if proxy.via.is_some() {
            let spec = proxy.to_string();
            return Err(ResolveError::ProxyWithVia { spec });
        }
        if proxies.iter().any(|&(seen, _)| seen == id) {
            let id = id.to_owned();
            return Err(ResolveError::DuplicateProxyId { id });
        }
        proxies.push((id, proxy));
    }
    let mut ids: Vec<&str> = proxies.iter().map(|&(id, _)| id).collect();
    let mut placements = Vec::with_capacity(tx.len());
    for spec in tx {
        if let Some(id) = spec.id.as_deref() {
            if spec.count.get() > 1 || ids.contains(&id) {
                let id = id.to_owned();
                return Err(ResolveError::DuplicateId { id });
            }
            ids.push(id);
        }
        let proxy = match spec.via.as_deref() {
            None => None,
            Some(name) => match proxies.iter().find(|&&(id, _)| id == name) {
                Some(&(_, proxy)) => Some(proxy),
                None => {
                    let names = proxies.iter().map(|&(id, _)| id);
                    return Err(ResolveError::UnknownVia {
                        name: name.to_owned(),
                        spec: spec.to_string(),
                        suggestion: keys::closest(name, names.clone()).map(str::to_owned),
                        known: names.map(str::to_owned).collect(),
                    });
                }
            },
        };
        placements.push(Placement { spec, proxy });
    }
    Ok(placements)
}
