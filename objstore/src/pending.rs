//! Incomplete multipart uploads: a source killed mid-upload (SIGKILL, OOM, a node lost) cannot
//! abort its upload, whose parts then stay in the bucket, invisible and billed. Before it uploads
//! a dataset again, the agent lists the incomplete uploads under that dataset's key directory
//! (ListMultipartUploads) and aborts those it is not itself running: with one agent per host and
//! the host in every key, any other is an orphan of an agent process that died.
//!
//! `object_store` has no ListMultipartUploads and aborts only uploads it started, so both
//! requests are made here, signed by `object_store`'s own SigV4 [`AwsAuthorizer`] (no signing of
//! our own) and sent with its HTTP client. The XML answer is read by [`parse`] (pure).

use object_store::ClientOptions;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, ReqwestConnector};
use zetaback_core::api::backup_policy::ObjectStoreTarget;

use crate::{Credentials, ObjStoreError};

/// One incomplete multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub key: String,
    pub upload_id: String,
}

/// The uploads of a ListMultipartUploads answer (pure); also whether it was truncated.
pub fn parse(xml: &str) -> (Vec<Pending>, bool) {
    let mut out = Vec::new();
    for block in xml.split("<Upload>").skip(1) {
        let block = block.split("</Upload>").next().unwrap_or_default();
        if let (Some(key), Some(upload_id)) = (element(block, "Key"), element(block, "UploadId")) {
            out.push(Pending {
                key: unescape(&key),
                upload_id: unescape(&upload_id),
            });
        }
    }
    let truncated = element(xml, "IsTruncated").as_deref() == Some("true");
    (out, truncated)
}

fn element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].to_owned())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Percent-encodes `s` as SigV4 wants it (`/` kept when `keep_slash`).
pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The bucket's base URL (path-style or virtual-hosted, as the target says).
fn bucket_url(target: &ObjectStoreTarget) -> String {
    let endpoint = target
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", target.region));
    let endpoint = endpoint.trim_end_matches('/');
    if target.path_style {
        format!("{endpoint}/{}", target.bucket)
    } else {
        match endpoint.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://{}.{host}", target.bucket),
            None => format!("{}.{endpoint}", target.bucket),
        }
    }
}

/// A client that signs and sends single requests to `target`.
pub struct Requests<'a> {
    target: &'a ObjectStoreTarget,
    credential: AwsCredential,
    client: HttpClient,
}

fn failed(
    op: &'static str,
    key: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ObjStoreError {
    ObjStoreError::request(
        op,
        key,
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        },
    )
}

/// An S3 error answer, kept as text (`explain` reads its code).
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {body}")]
struct Answer {
    status: u16,
    body: String,
}

impl<'a> Requests<'a> {
    pub fn new(target: &'a ObjectStoreTarget, creds: &Credentials) -> Result<Self, ObjStoreError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = ClientOptions::default().with_allow_http(
            target
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        );
        let client =
            ReqwestConnector::default()
                .connect(&options)
                .map_err(|e| ObjStoreError::Config {
                    bucket: target.bucket.clone(),
                    reason: e.to_string(),
                })?;
        Ok(Self {
            target,
            credential: AwsCredential {
                key_id: creds.access_key_id.clone(),
                secret_key: creds.secret_access_key.clone(),
                token: None,
            },
            client,
        })
    }

    async fn send(
        &self,
        op: &'static str,
        key: &str,
        method: http::Method,
        url: String,
    ) -> Result<String, ObjStoreError> {
        self.send_with(op, key, method, url, &[]).await
    }

    /// Signs and sends one request with `headers` (signed too); the answer's body.
    async fn send_with(
        &self,
        op: &'static str,
        key: &str,
        method: http::Method,
        url: String,
        headers: &[(&str, &str)],
    ) -> Result<String, ObjStoreError> {
        let mut builder = http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut req: HttpRequest = builder
            .body(Vec::<u8>::new().into())
            .map_err(|e| failed(op, key, e))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.target.region)
            .try_authorize(&mut req, None)
            .map_err(|e| ObjStoreError::request(op, key, e))?;
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| failed(op, key, e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .bytes()
            .await
            .map_err(|e| failed(op, key, e))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(failed(
                op,
                key,
                Answer {
                    status: status.as_u16(),
                    body,
                },
            ));
        }
        Ok(body)
    }

    /// The incomplete uploads whose key starts with `prefix` (every page).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Pending>, ObjStoreError> {
        let mut all = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut url = format!(
                "{}?prefix={}&uploads=",
                bucket_url(self.target),
                encode(prefix, false)
            );
            if let Some((k, u)) = &marker {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(k, false),
                    encode(u, false)
                ));
            }
            let xml = self
                .send("ListMultipartUploads", prefix, http::Method::GET, url)
                .await?;
            let (page, truncated) = parse(&xml);
            let last = page.last().map(|p| (p.key.clone(), p.upload_id.clone()));
            all.extend(page);
            match (truncated, last) {
                (true, Some(m)) => marker = Some(m),
                _ => return Ok(all),
            }
        }
    }

    /// Copies object `from` to `to` inside the bucket (CopyObject: server-side, at most 5 GiB),
    /// into `storage_class` when given (`x-amz-storage-class`, which `object_store`'s copy
    /// cannot send).
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        storage_class: Option<&str>,
    ) -> Result<(), ObjStoreError> {
        let url = format!("{}/{}", bucket_url(self.target), encode(to, true));
        let source = format!("{}/{}", self.target.bucket, encode(from, true));
        let mut headers = vec![("x-amz-copy-source", source.as_str())];
        if let Some(class) = storage_class {
            headers.push(("x-amz-storage-class", class));
        }
        let body = self
            .send_with("CopyObject", to, http::Method::PUT, url, &headers)
            .await?;
        // A copy can fail after the 200 was sent: the error is then in the body.
        if body.contains("<Error>") {
            return Err(failed("CopyObject", to, Answer { status: 200, body }));
        }
        Ok(())
    }

    /// Aborts one incomplete upload (its parts are deleted).
    pub async fn abort(&self, p: &Pending) -> Result<(), ObjStoreError> {
        let url = format!(
            "{}/{}?uploadId={}",
            bucket_url(self.target),
            encode(&p.key, true),
            encode(&p.upload_id, false)
        );
        self.send("AbortMultipartUpload", &p.key, http::Method::DELETE, url)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_and_truncation_are_read_from_the_answer() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket>
<IsTruncated>true</IsTruncated>
<Upload><Key>p/h/tank+db/1.full</Key><UploadId>abc_1</UploadId><Initiated>2026-12-06T16:00:00Z</Initiated></Upload>
<Upload><Key>p/h/a&amp;b/2.full</Key><UploadId>def</UploadId></Upload>
<Upload><Key>no id</Key></Upload>
</ListMultipartUploadsResult>"#;
        let (pending, truncated) = parse(xml);
        assert!(truncated);
        assert_eq!(
            pending,
            [
                Pending {
                    key: "p/h/tank+db/1.full".into(),
                    upload_id: "abc_1".into()
                },
                Pending {
                    key: "p/h/a&b/2.full".into(),
                    upload_id: "def".into()
                },
            ]
        );
        assert_eq!(parse("<ListMultipartUploadsResult/>"), (vec![], false));
    }

    #[test]
    fn encoding_follows_sigv4() {
        assert_eq!(encode("p/h/tank+db/1.full", true), "p/h/tank%2Bdb/1.full");
        assert_eq!(encode("p/h/", false), "p%2Fh%2F");
        assert_eq!(encode("a b~_-.", false), "a%20b~_-.");
    }

    #[test]
    fn bucket_urls() {
        let mut t: ObjectStoreTarget = serde_json::from_value(serde_json::json!({
            "endpoint": "http://127.0.0.1:8333/", "bucket": "b", "pathStyle": true,
            "credentialsSecret": {"name": "s"},
        }))
        .unwrap();
        assert_eq!(bucket_url(&t), "http://127.0.0.1:8333/b");
        t.path_style = false;
        assert_eq!(bucket_url(&t), "http://b.127.0.0.1:8333");
        t.endpoint = None;
        assert_eq!(bucket_url(&t), "https://b.s3.us-east-1.amazonaws.com");
    }
}
