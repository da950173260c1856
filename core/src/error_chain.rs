//! The one way an error is written out with its causes: `outer: cause: root cause`, each
//! cause once (a message that already quotes its cause does not repeat it). hyper's
//! "client error (Connect)" alone, for instance, does not say that the peer's certificate was
//! refused; its causes do.

use std::error::Error;

/// `e` and its chain of causes, `: `-separated, skipping a cause whose text the message so far
/// already contains.
pub fn format(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        cause: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |cause, &text| {
                Some(Layer {
                    text,
                    cause: cause.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn every_cause_once_outermost_first() {
        assert_eq!(format(&layers(&["alone"])), "alone");
        assert_eq!(
            format(&layers(&[
                "client error (Connect)",
                "tls handshake",
                "UnknownIssuer"
            ])),
            "client error (Connect): tls handshake: UnknownIssuer"
        );
        assert_eq!(
            format(&layers(&[
                "reading /x: permission denied",
                "permission denied"
            ])),
            "reading /x: permission denied"
        );
    }
}
