//! What went wrong with a request to the bucket, in a form a status can say: the S3 error code
//! and message the server answered (taken out of its XML body, which the client only hands
//! back as text), or that the server could not be reached. Pure: the caller adds what it knows
//! (the Secret, the endpoint, the bucket) to make the sentence.

/// The cause of a failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The server answered with an S3 error: its `<Code>` and `<Message>`.
    Refused { code: String, message: String },
    /// No answer: connection refused, DNS, timeout.
    Unreachable,
    /// Anything else (the first line of the error, without any XML).
    Other(String),
}

/// Reads the cause out of an error's text (`object_store::Error`'s display, which carries the
/// server's body as it came).
pub fn cause(text: &str) -> Cause {
    if let Some(code) = element(text, "Code") {
        let message = element(text, "Message").unwrap_or_default();
        return Cause::Refused { code, message };
    }
    const NO_ANSWER: [&str; 5] = [
        "error sending request",
        "Connection refused",
        "connection refused",
        "dns error",
        "timed out",
    ];
    if NO_ANSWER.iter().any(|m| text.contains(m)) {
        return Cause::Unreachable;
    }
    let first = text.lines().next().unwrap_or_default();
    let clean = first.split('<').next().unwrap_or_default().trim();
    Cause::Other(clean.chars().take(300).collect())
}

/// The text of the first `<name>…</name>` element, if any and not empty.
fn element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    let value = text[start..start + len].trim();
    (!value.is_empty() && !value.contains('<')).then(|| value.chars().take(200).collect())
}

/// The cause in a few words, for an error's message: `Code: Message` of the server's answer,
/// or that there was none.
pub fn brief(text: &str) -> String {
    match cause(text) {
        Cause::Refused { code, message } if message.is_empty() => code,
        Cause::Refused { code, message } => format!("{code}: {message}"),
        Cause::Unreachable => {
            "no answer from the server (connection refused, DNS or timeout)".into()
        }
        Cause::Other(first) => first,
    }
}

/// A sentence for a policy's status: what failed and what to check. `secret` names the
/// keys used (e.g. `Secret ns/name`), `endpoint` the server, `bucket` the bucket.
pub fn sentence(text: &str, secret: &str, endpoint: &str, bucket: &str) -> String {
    match cause(text) {
        Cause::Refused { code, message } => {
            let hint = match code.as_str() {
                "SignatureDoesNotMatch" | "InvalidAccessKeyId" => {
                    format!("the keys of {secret} are not accepted by {endpoint}")
                }
                "AccessDenied" => {
                    format!("the keys of {secret} are not allowed this in bucket {bucket}")
                }
                "NoSuchBucket" => format!("bucket {bucket} does not exist at {endpoint}"),
                _ => format!("refused by {endpoint} (bucket {bucket})"),
            };
            if message.is_empty() {
                format!("{code}: {hint}")
            } else {
                format!("{code}: {hint} ({message})")
            }
        }
        Cause::Unreachable => format!("cannot reach {endpoint} (bucket {bucket}): no answer"),
        Cause::Other(first) => format!("bucket {bucket} at {endpoint}: {first}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "object store LIST p: Generic S3 error: Error performing list request: \
        Error performing GET http://127.0.0.1:18333/b?list-type=2 in 213ms - Server returned \
        non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\
        <Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does \
        not match.</Message><Resource>/b</Resource></Error>";

    #[test]
    fn the_servers_code_and_message_come_out_of_the_xml() {
        assert_eq!(
            cause(REFUSED),
            Cause::Refused {
                code: "SignatureDoesNotMatch".into(),
                message: "The request signature we calculated does not match.".into()
            }
        );
        let s = sentence(REFUSED, "Secret ns/keys", "http://s3:9000", "b");
        assert_eq!(
            s,
            "SignatureDoesNotMatch: the keys of Secret ns/keys are not accepted by \
             http://s3:9000 (The request signature we calculated does not match.)"
        );
    }

    #[test]
    fn every_known_code_gets_its_hint() {
        let xml = |code: &str| format!("x: <Error><Code>{code}</Code></Error>");
        let s = |code: &str| sentence(&xml(code), "Secret k", "http://e", "b");
        assert_eq!(
            s("NoSuchBucket"),
            "NoSuchBucket: bucket b does not exist at http://e"
        );
        assert_eq!(
            s("AccessDenied"),
            "AccessDenied: the keys of Secret k are not allowed this in bucket b"
        );
        assert!(s("InvalidAccessKeyId").contains("are not accepted"));
        assert_eq!(s("SlowDown"), "SlowDown: refused by http://e (bucket b)");
    }

    #[test]
    fn briefly() {
        assert_eq!(
            brief(REFUSED),
            "SignatureDoesNotMatch: The request signature we calculated does not match."
        );
        assert_eq!(
            brief("x <Error><Code>NoSuchBucket</Code></Error>"),
            "NoSuchBucket"
        );
        assert!(brief("HTTP error: error sending request").starts_with("no answer"));
        assert_eq!(brief("Generic error\n<xml>"), "Generic error");
    }

    #[test]
    fn no_answer_and_other_errors() {
        let e = "object store LIST p: Generic S3 error: Error performing GET http://127.0.0.1:9/b \
                 in 2.1s, after 10 retries - HTTP error: error sending request";
        assert_eq!(cause(e), Cause::Unreachable);
        assert_eq!(
            sentence(e, "Secret k", "http://127.0.0.1:9", "b"),
            "cannot reach http://127.0.0.1:9 (bucket b): no answer"
        );
        assert_eq!(
            cause("odd <b>bold</b>\nsecond line"),
            Cause::Other("odd".into())
        );
        // An empty or nested element is no code.
        assert_eq!(cause("<Code></Code>"), Cause::Other(String::new()));
        assert_eq!(cause("<Code><x></Code>"), Cause::Other(String::new()));
    }
}
