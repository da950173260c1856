//! The commands: fetch with [`Cluster`], shape with [`report`], print in the chosen format.

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use super::cluster::{Cluster, Scope};
use super::error::CliError;
use super::filter::Filter;
use super::monitor::{self, PolicyHealth, Verdict};
use super::report::{self, BackupRow, Disappeared, RetentionAction, RetentionRow, Source};
use super::request::{self, BackupNowRequest};
use super::table;
use super::{Cli, Command, Connect, FilterArgs, Format, GlobalArgs, Io};
use crate::api::{BackupPolicy, BackupType, ZfsHost};
use crate::policy::PolicyRules;
use crate::selection::DatasetMatcher;
use crate::store::Layout;

/// Prints `value` as JSON or YAML, or `table()` as text.
pub(super) fn emit<T: Serialize>(
    io: &mut Io<'_>,
    format: Format,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let text = match format {
        Format::Table => table(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(value).map_err(|e| CliError::Encode {
                format: "JSON",
                message: e.to_string(),
            })?;
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| CliError::Encode {
            format: "YAML",
            message: e.to_string(),
        })?,
        Format::Html => {
            return Err(CliError::Usage(
                "-o html is the output of `report` only".into(),
            ));
        }
    };
    io.out.write_all(text.as_bytes())?;
    io.out.flush()?;
    Ok(())
}

/// The stores' CA (`--store-ca`), for reading catalogues over TLS.
pub(super) fn store_ca(
    global: &GlobalArgs,
) -> Result<Option<std::sync::Arc<crate::peer_tls::ReaderTls>>, CliError> {
    global
        .store_ca
        .as_deref()
        .map(|path| {
            crate::peer_tls::ReaderTls::from_file(path)
                .map(std::sync::Arc::new)
                .map_err(|e| CliError::Config(format!("--store-ca: {e}")))
        })
        .transpose()
}

pub(super) fn token(global: &GlobalArgs) -> Result<Option<String>, CliError> {
    if let Some(path) = &global.token_file {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::TokenFile {
            path: path.clone(),
            source,
        })?;
        return Ok(Some(text.trim().to_owned()));
    }
    Ok(std::env::var("ZETABACK_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// A catalogue reader's token minted with the user's own credentials (TokenRequest for
/// `ns/name`, audience `zetaback-store`, 10 minutes), or none when that is refused: the
/// commands then say the stores could not be read, as without a token.
async fn mint_reader_token(client: &kube::Client, reader: &str) -> Option<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let (ns, name) = reader.split_once('/')?;
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["zetaback-store".into()]),
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    match api
        .create_token_request(name, &kube::api::PostParams::default(), &request)
        .await
    {
        Ok(answer) => answer.status.and_then(|s| s.token),
        Err(e) => {
            tracing::warn!(error = %e, %reader, "could not mint a catalogue reader token");
            None
        }
    }
}

pub(super) async fn connect(
    global: &GlobalArgs,
    connect: Connect,
) -> Result<(kube::Client, String), CliError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    match connect {
        Connect::Client { client, namespace } => Ok((client, namespace)),
        Connect::Infer => {
            let config = if global.kubeconfig.is_none() && global.context.is_none() {
                kube::Config::infer()
                    .await
                    .map_err(|e| CliError::Config(e.to_string()))?
            } else {
                let options = KubeConfigOptions {
                    context: global.context.clone(),
                    ..Default::default()
                };
                match &global.kubeconfig {
                    Some(path) => {
                        let kc = Kubeconfig::read_from(path)
                            .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
                        kube::Config::from_custom_kubeconfig(kc, &options).await
                    }
                    None => kube::Config::from_kubeconfig(&options).await,
                }
                .map_err(|e| CliError::Config(e.to_string()))?
            };
            let namespace = config.default_namespace.clone();
            let client =
                kube::Client::try_from(config).map_err(|e| CliError::Config(e.to_string()))?;
            Ok((client, namespace))
        }
    }
}

/// Runs a parsed command; the exit code on success.
pub(super) async fn execute(cli: Cli, how: Connect, io: &mut Io<'_>) -> Result<u8, CliError> {
    let mut token = token(&cli.global)?;
    let (client, default_ns) = connect(&cli.global, how).await?;
    if token.is_none()
        && let Some(reader) = &cli.global.reader_service_account
    {
        token = mint_reader_token(&client, reader).await;
    }
    let scope = if cli.global.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(cli.global.namespace.clone().unwrap_or(default_ns))
    };
    let mut cx = Cx {
        cluster: Cluster::new(client, token, store_ca(&cli.global)?),
        format: cli.global.output,
        all: cli.global.all_namespaces,
        scope,
        now: Timestamp::now(),
    };
    let one = |scope: &Scope| match scope {
        Scope::Namespace(ns) => Ok(ns.clone()),
        Scope::All => Err(CliError::Usage(
            "--all-namespaces does not apply to a command on one policy; use -n NAMESPACE".into(),
        )),
    };
    match cli.command {
        Command::List { filter } => cx.list(io, &filter).await,
        Command::Summary {
            filter,
            detail,
            files,
        } => cx.summary(io, &filter, detail || files, files).await,
        Command::Violators {
            filter,
            all,
            max_status_age,
        } => {
            let max_age = crate::duration::parse_duration(&max_status_age)
                .map_err(|e| CliError::Usage(format!("--max-status-age: {e}")))?;
            cx.violators(io, &filter, all, max_age).await
        }
        Command::Backup {
            policy,
            host,
            dataset,
            full,
            incremental,
            dry_run,
            wait,
        } => {
            let ns = one(&cx.scope)?;
            let kind = match (full, incremental) {
                (true, _) => Some(BackupType::Full),
                (_, true) => Some(BackupType::Incremental),
                _ => None,
            };
            let code = cx
                .backup(io, &ns, &policy, host, dataset, kind, dry_run)
                .await?;
            if wait && code == 0 {
                let requested_at = super::request::whole_seconds(cx.now);
                return super::backup_progress::follow(&cx.cluster, &ns, &policy, requested_at)
                    .await;
            }
            Ok(code)
        }
        Command::Expunge { policy, dry_run } => {
            let ns = one(&cx.scope)?;
            cx.retention(io, &ns, &policy, RetentionAction::Delete, dry_run, false)
                .await
        }
        Command::Archive {
            policy,
            dry_run,
            yes,
        } => {
            let ns = one(&cx.scope)?;
            cx.retention(io, &ns, &policy, RetentionAction::Archive, dry_run, yes)
                .await
        }
        Command::Restore(_) => Err(CliError::Usage("restore is run by cli::restore".into())),
        Command::Verify {
            policy,
            host,
            dataset,
            timeout,
        } => {
            let ns = one(&cx.scope)?;
            let timeout = crate::duration::parse_duration(&timeout)
                .map_err(|e| CliError::Usage(format!("--timeout: {e}")))?;
            cx.verify(io, &ns, &policy, host, dataset, timeout).await
        }
        Command::Report => cx.report(io).await,
        Command::Drill {
            policy,
            host,
            dataset,
            timeout,
        } => {
            let ns = one(&cx.scope)?;
            let timeout = crate::duration::parse_duration(&timeout)
                .map_err(|e| CliError::Usage(format!("--timeout: {e}")))?;
            let request = (host, dataset);
            super::drill::run(&cx.cluster, io.out, &ns, &policy, request, timeout, cx.now).await
        }
    }
}

impl Cx {
    /// `report`: the compliance report of the policies in scope (`-o html`: the page; the
    /// table and JSON/YAML formats print the model's numbers).
    async fn report(&mut self, io: &mut Io<'_>) -> Result<u8, CliError> {
        use super::html_report::{model, render};
        let policies = self.cluster.policies(&self.scope).await?;
        let hosts = self.hosts().await;
        let mut rows = std::collections::BTreeMap::new();
        for p in &policies {
            let (source, backups) = self
                .backups(io, p, &hosts, &Filter::default(), false)
                .await?;
            let note = (source == Source::Jobs).then(|| {
                "The backup store could not be read: backups are shown from the BackupJob history."
                    .to_owned()
            });
            rows.insert(qualified(p), (backups, note));
        }
        let report = model::build(&policies, &rows, self.now);
        if self.format == Format::Html {
            io.out.write_all(render::render(&report).as_bytes())?;
            io.out.flush()?;
            return Ok(0);
        }
        let numbers = model::numbers(&report);
        emit(io, self.format, &numbers, || model::table(&numbers))?;
        Ok(0)
    }

    /// `verify`: sets the `verify-now` annotation, then follows the policy's status (see
    /// [`super::verify`]), printing a progress line whenever it moves.
    async fn verify(
        &mut self,
        io: &mut Io<'_>,
        ns: &str,
        name: &str,
        host: Option<String>,
        dataset: Option<String>,
        timeout: std::time::Duration,
    ) -> Result<u8, CliError> {
        use crate::api::backup_policy::{VERIFY_NOW_ANNOTATION, VerifyNowRequest};
        let p = self.cluster.policy(ns, name).await?;
        let req = VerifyNowRequest {
            host,
            dataset,
            requested_at: request::whole_seconds(self.now),
        };
        let value = serde_json::to_string(&req).map_err(|e| CliError::Encode {
            format: "JSON",
            message: e.to_string(),
        })?;
        self.cluster
            .annotate(&p, serde_json::json!({ VERIFY_NOW_ANNOTATION: value }))
            .await?;
        let start = std::time::Instant::now();
        let mut last = None;
        loop {
            let p = self.cluster.policy(ns, name).await?;
            let progress = super::verify::progress(p.status.as_ref(), &req);
            if progress.finished() || start.elapsed() >= timeout {
                writeln!(io.out, "{}", progress.line())?;
                return Ok(progress.state().exit_code());
            }
            let shown = (progress.handled, progress.done, progress.pending);
            if last != Some(shown) && progress.handled {
                writeln!(
                    io.err,
                    "verifying: {}/{} dataset(s) done, {} backup(s) pending",
                    progress.done, progress.datasets, progress.pending
                )?;
                last = Some(shown);
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
}

struct Cx {
    cluster: Cluster,
    format: Format,
    all: bool,
    scope: Scope,
    now: Timestamp,
}

/// The catalogue of a policy, or why there is none.
type Fetched = Result<crate::store::Catalogue, String>;

fn qualified(p: &BackupPolicy) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

impl Cx {
    fn display(&self, p: &BackupPolicy) -> String {
        if self.all { qualified(p) } else { p.name_any() }
    }

    /// ZfsHosts, or (when they cannot be listed) the reason, which then explains every
    /// catalogue that cannot be found.
    async fn hosts(&self) -> Result<Vec<ZfsHost>, String> {
        self.cluster.hosts().await.map_err(|e| e.chain())
    }

    async fn catalogue(
        &mut self,
        p: &BackupPolicy,
        hosts: &Result<Vec<ZfsHost>, String>,
    ) -> Fetched {
        match hosts {
            Ok(h) => self.cluster.catalogue(p, h).await,
            Err(why) => Err(why.clone()),
        }
    }

    /// The backups of a policy: the catalogue's, or (saying so on stderr) its job history.
    async fn backups(
        &mut self,
        io: &mut Io<'_>,
        p: &BackupPolicy,
        hosts: &Result<Vec<ZfsHost>, String>,
        filter: &Filter,
        files: bool,
    ) -> Result<(Source, Vec<BackupRow>), CliError> {
        let selected = report::selected_hosts(p, hosts.as_deref().unwrap_or(&[]));
        match self.catalogue(p, hosts).await {
            Ok(cat) => {
                let layout = if files {
                    p.spec.target.path.as_deref().map(Layout::new)
                } else {
                    None
                };
                let rows = report::rows_from_catalogue(p, &selected, &cat, filter, layout.as_ref())
                    .map_err(|e| CliError::InvalidPolicy {
                        policy: qualified(p),
                        message: e.to_string(),
                    })?;
                for problem in &cat.problems {
                    writeln!(io.err, "warning: store problem: {problem}")?;
                }
                Ok((Source::Catalogue, rows))
            }
            Err(why) => {
                writeln!(
                    io.err,
                    "warning: the backup catalogue of policy {} is unreachable: {why}",
                    qualified(p)
                )?;
                writeln!(
                    io.err,
                    "note: showing its BackupJob history instead: only backups whose jobs still exist are listed"
                )?;
                let jobs = self.cluster.jobs(p).await?;
                Ok((Source::Jobs, report::rows_from_jobs(p, &jobs, filter)))
            }
        }
    }

    async fn list(&mut self, io: &mut Io<'_>, f: &FilterArgs) -> Result<u8, CliError> {
        let filter = Filter::new(f.host.as_deref(), f.dataset.as_deref())?;
        let policies = self.cluster.policies(&self.scope).await?;
        let hosts = self.hosts().await;
        let mut rows = Vec::new();
        for p in &policies {
            rows.extend(self.backups(io, p, &hosts, &filter, false).await?.1);
        }
        let all = self.all;
        emit(io, self.format, &rows, || {
            if policies.is_empty() {
                "No BackupPolicies found.\n".into()
            } else if rows.is_empty() {
                "No backups found.\n".into()
            } else {
                report::render_list(&rows, all)
            }
        })?;
        Ok(0)
    }

    async fn summary(
        &mut self,
        io: &mut Io<'_>,
        f: &FilterArgs,
        detail: bool,
        files: bool,
    ) -> Result<u8, CliError> {
        let filter = Filter::new(f.host.as_deref(), f.dataset.as_deref())?;
        let policies = self.cluster.policies(&self.scope).await?;
        let hosts = self.hosts().await;
        let mut out = Vec::new();
        for p in &policies {
            let (source, rows) = self.backups(io, p, &hosts, &filter, files).await?;
            let covered = match &hosts {
                Ok(h) => report::covered_datasets(p, h).map_err(|e| CliError::InvalidPolicy {
                    policy: qualified(p),
                    message: e.to_string(),
                })?,
                Err(_) => Vec::new(),
            };
            out.extend(report::summarize(
                p, source, rows, &covered, &filter, detail,
            ));
        }
        let (now, all) = (self.now, self.all);
        emit(io, self.format, &out, || {
            if policies.is_empty() {
                "No BackupPolicies found.\n".into()
            } else if out.is_empty() {
                "No datasets found.\n".into()
            } else {
                report::render_summary(&out, now, all, detail, files)
            }
        })?;
        Ok(0)
    }

    async fn violators(
        &mut self,
        io: &mut Io<'_>,
        f: &FilterArgs,
        all: bool,
        max_status_age: std::time::Duration,
    ) -> Result<u8, CliError> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            #[serde(flatten)]
            verdict: &'a Verdict,
            policies: &'a [PolicyHealth],
            #[serde(skip_serializing_if = "Option::is_none")]
            disappeared: Option<&'a [Disappeared]>,
        }
        let filter = Filter::new(f.host.as_deref(), f.dataset.as_deref())?;
        let policies = self.cluster.policies(&self.scope).await?;
        let health: Vec<PolicyHealth> = policies
            .iter()
            .map(|p| report::policy_health(p, self.display(p), &filter))
            .collect();
        let verdict = if policies.is_empty() {
            monitor::nothing_found(&match &self.scope {
                Scope::Namespace(ns) => format!("in namespace {ns}"),
                Scope::All => "in any namespace".to_owned(),
            })
        } else {
            monitor::assess(
                &health,
                monitor::Freshness {
                    now: self.now,
                    max_age: max_status_age,
                },
            )
        };
        let mut gone = Vec::new();
        if all {
            let hosts = self.hosts().await;
            for p in &policies {
                match self.catalogue(p, &hosts).await {
                    Ok(cat) => {
                        let selected = report::selected_hosts(p, hosts.as_deref().unwrap_or(&[]));
                        let hs = hosts.as_deref().unwrap_or(&[]);
                        let mut d =
                            report::disappeared(p, &selected, hs, &cat, &filter).map_err(|e| {
                                CliError::InvalidPolicy {
                                    policy: qualified(p),
                                    message: e.to_string(),
                                }
                            })?;
                        for x in &mut d {
                            x.policy = self.display(p);
                        }
                        gone.extend(d);
                    }
                    Err(why) => writeln!(
                        io.err,
                        "warning: the backup catalogue of policy {} is unreachable: {why}; datasets that disappeared from its hosts are not listed",
                        qualified(p)
                    )?,
                }
            }
        }
        let out = Out {
            verdict: &verdict,
            policies: &health,
            disappeared: all.then_some(gone.as_slice()),
        };
        let now = self.now;
        emit(io, self.format, &out, || {
            let mut text = format!("{}\n", verdict.line());
            text.push_str(&report::render_violators(&health, &gone, now));
            text
        })?;
        Ok(verdict.exit_code)
    }

    #[allow(clippy::too_many_arguments)]
    async fn backup(
        &mut self,
        io: &mut Io<'_>,
        ns: &str,
        name: &str,
        host: Option<String>,
        dataset: Option<String>,
        kind: Option<BackupType>,
        dry_run: bool,
    ) -> Result<u8, CliError> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            namespace: &'a str,
            policy: &'a str,
            annotation: &'a str,
            request: &'a BackupNowRequest,
            dry_run: bool,
        }
        let p = self.cluster.policy(ns, name).await?;
        if let (Some(h), Some(names)) = (&host, &p.spec.hosts.names)
            && !names.iter().any(|n| n.as_str() == h)
        {
            let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            return Err(CliError::Usage(format!(
                "policy {ns}/{name} does not cover host {h} (its hosts: {})",
                names.join(", ")
            )));
        }
        if let Some(d) = &dataset {
            let matcher =
                DatasetMatcher::new(&p.spec.datasets).map_err(|e| CliError::InvalidPolicy {
                    policy: qualified(&p),
                    message: e.to_string(),
                })?;
            if !matcher.matches(d) {
                return Err(CliError::Usage(format!(
                    "policy {ns}/{name} does not cover dataset {d} (see its spec.datasets)"
                )));
            }
        }
        let req = request::backup_now(host, dataset, kind, self.now);
        // The request joins the queue on the policy; the write is refused if the policy
        // changed since it was read (another request joined), and then tried again.
        let mut p = p;
        let mut attempt = 0;
        let value = loop {
            let handled = p
                .status
                .as_ref()
                .and_then(|s| s.backup_now_handled.as_ref())
                .map(|t| t.0);
            let queue = request::enqueue(
                p.annotations()
                    .get(request::BACKUP_NOW_ANNOTATION)
                    .map(String::as_str),
                handled,
                req.clone(),
            )
            .map_err(|e| CliError::Usage(format!("policy {ns}/{name}: {e}")))?;
            let value = request::to_annotation(&queue).map_err(|e| CliError::Encode {
                format: "JSON",
                message: e.to_string(),
            })?;
            if dry_run {
                break value;
            }
            attempt += 1;
            match self
                .cluster
                .annotate_unchanged(
                    &p,
                    serde_json::json!({ request::BACKUP_NOW_ANNOTATION: value }),
                )
                .await
            {
                Ok(()) => break value,
                Err(CliError::Kube {
                    source: kube::Error::Api(s),
                    ..
                }) if s.code == 409 && attempt < 5 => {
                    p = self.cluster.policy(ns, name).await?;
                }
                Err(e) => return Err(e),
            }
        };
        let out = Out {
            namespace: ns,
            policy: name,
            annotation: request::BACKUP_NOW_ANNOTATION,
            request: &req,
            dry_run,
        };
        emit(io, self.format, &out, || {
            if dry_run {
                format!(
                    "dry run: would request {} under policy {ns}/{name}\n  {}={value}\n",
                    request::describe(&req),
                    request::BACKUP_NOW_ANNOTATION
                )
            } else {
                format!(
                    "requested {} under policy {ns}/{name}; the controller creates the BackupJobs (kubectl get backupjobs -n {ns} -l zetaback.io/policy={name})\n",
                    request::describe(&req)
                )
            }
        })?;
        Ok(0)
    }

    async fn retention(
        &mut self,
        io: &mut Io<'_>,
        ns: &str,
        name: &str,
        action: RetentionAction,
        dry_run: bool,
        yes: bool,
    ) -> Result<u8, CliError> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            namespace: &'a str,
            policy: &'a str,
            dry_run: bool,
            requested: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            reconcile_now: Option<String>,
            delete: Vec<&'a RetentionRow>,
            archive: Vec<&'a RetentionRow>,
        }
        let p = self.cluster.policy(ns, name).await?;
        let invalid = |message: String| CliError::InvalidPolicy {
            policy: format!("{ns}/{name}"),
            message,
        };
        p.spec.check().map_err(invalid)?;
        let rules = PolicyRules::from_spec(&p.spec).map_err(|e| invalid(e.to_string()))?;
        let hosts = self.cluster.hosts().await?;
        let covered = report::covered_datasets(&p, &hosts).map_err(|e| invalid(e.to_string()))?;
        let cat = self
            .cluster
            .catalogue(&p, &hosts)
            .await
            .map_err(|message| CliError::CatalogueUnavailable {
                policy: format!("{ns}/{name}"),
                message,
            })?;
        let (rows, problems) = report::retention_rows(&rules, &cat, &covered, self.now);
        for problem in problems {
            writeln!(io.err, "warning: {problem}")?;
        }
        let of = |a: RetentionAction| rows.iter().filter(|r| r.action == a).collect::<Vec<_>>();
        let (delete, archive) = (of(RetentionAction::Delete), of(RetentionAction::Archive));
        let (mine, other) = match action {
            RetentionAction::Delete => (&delete, &archive),
            RetentionAction::Archive => (&archive, &delete),
        };
        // "delete 2 backups" / "move 2 backups to the archive"
        let act = |a: RetentionAction, what: &str| match a {
            RetentionAction::Delete => format!("delete {what}"),
            RetentionAction::Archive => format!("move {what} to the archive"),
        };
        let other_action = match action {
            RetentionAction::Delete => RetentionAction::Archive,
            RetentionAction::Archive => RetentionAction::Delete,
        };
        let bytes: u64 = mine.iter().map(|r| r.bytes).sum();
        let table = self.format == Format::Table;
        let mut text = String::new();
        if mine.is_empty() {
            text.push_str(&format!(
                "Retention of policy {ns}/{name} has nothing to {} now.\n",
                match action {
                    RetentionAction::Delete => "delete",
                    RetentionAction::Archive => "move to the archive",
                }
            ));
        } else {
            let what = format!(
                "{} ({})",
                plural(mine.len(), "backup", "backups"),
                table::bytes(bytes)
            );
            text.push_str(&format!(
                "Retention of policy {ns}/{name} would {}:\n",
                act(action, &what)
            ));
            text.push_str(&report::render_retention(mine, self.now));
        }
        if !other.is_empty() {
            text.push_str(&format!(
                "When it applies retention, the controller would also {}.\n",
                act(other_action, &plural(other.len(), "backup", "backups"))
            ));
        }
        if table {
            io.out.write_all(text.as_bytes())?;
        }
        let mut requested = None;
        if !mine.is_empty() && !dry_run {
            if action == RetentionAction::Archive && !yes {
                if !io.interactive {
                    return Err(CliError::NeedsConfirmation);
                }
                write!(
                    io.err,
                    "Move {} ({}) of policy {ns}/{name} to the archive? [y/N] ",
                    plural(mine.len(), "backup", "backups"),
                    table::bytes(bytes)
                )?;
                io.err.flush()?;
                let mut answer = String::new();
                io.input.read_line(&mut answer)?;
                if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                    writeln!(io.err, "aborted; nothing requested")?;
                    return Ok(1);
                }
            }
            let stamp = request::reconcile_now(self.now);
            self.cluster
                .annotate(
                    &p,
                    serde_json::json!({ request::RECONCILE_NOW_ANNOTATION: stamp }),
                )
                .await?;
            requested = Some(stamp);
        }
        let out = Out {
            namespace: ns,
            policy: name,
            dry_run,
            requested: requested.is_some(),
            reconcile_now: requested.clone(),
            delete: delete.clone(),
            archive: archive.clone(),
        };
        emit(io, self.format, &out, || match (&requested, dry_run) {
            (Some(stamp), _) => format!(
                "requested: the controller applies retention of {ns}/{name} now ({}={stamp})\n",
                request::RECONCILE_NOW_ANNOTATION
            ),
            (None, true) if !mine.is_empty() => "dry run: nothing requested\n".into(),
            (None, _) => String::new(),
        })?;
        Ok(0)
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
