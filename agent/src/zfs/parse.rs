//! Parsers for `zfs` / `zpool` output. Pure functions over text, unit-tested on recorded output.

use std::collections::BTreeMap;

use serde::Serialize;

/// The user property that marks a snapshot as made by zetaback.
pub const MANAGED_PROPERTY: &str = "zetaback.io:managed";
/// The user property on a received replica snapshot that holds its backup manifest (JSON):
/// what makes a replica visible in the catalogue.
pub const MANIFEST_PROPERTY: &str = "zetaback.io:manifest";
/// The user property that gives a dataset a backup class.
pub const CLASS_PROPERTY: &str = "zetaback.io:class";
/// The user property that excludes a dataset from backups when `on`.
pub const EXCLUDE_PROPERTY: &str = "zetaback.io:exclude";

/// The properties the inventory reads, in the order `zfs list -o` is given them.
pub const INVENTORY_PROPERTIES: [&str; 7] = [
    "type",
    "creation",
    "used",
    "referenced",
    MANAGED_PROPERTY,
    CLASS_PROPERTY,
    EXCLUDE_PROPERTY,
];

/// A filesystem or volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub volume: bool,
    /// Creation time, seconds since the epoch.
    pub creation: i64,
    pub used: u64,
    pub referenced: u64,
    pub class: Option<String>,
    pub excluded: bool,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub dataset: String,
    /// The short name, after `@`.
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub creation: i64,
    pub used: u64,
    pub referenced: u64,
    /// Marked by zetaback's user property.
    pub managed: bool,
}

impl SnapshotInfo {
    /// `dataset@name`.
    pub fn full_name(&self) -> String {
        format!("{}@{}", self.dataset, self.name)
    }
}

/// Datasets and snapshots, each sorted by name (snapshots by dataset, then creation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    pub datasets: Vec<DatasetInfo>,
    pub snapshots: Vec<SnapshotInfo>,
}

impl Inventory {
    /// The snapshots of one dataset, oldest first.
    pub fn snapshots_of<'a>(&'a self, dataset: &'a str) -> impl Iterator<Item = &'a SnapshotInfo> {
        self.snapshots.iter().filter(move |s| s.dataset == dataset)
    }
}

/// A pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolInfo {
    pub name: String,
    pub health: String,
}

fn opt_value(v: &str) -> Option<String> {
    (v != "-" && !v.is_empty()).then(|| v.to_owned())
}

fn number(name: &str, prop: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{name}: {prop} is {v:?}, not a number of bytes"))
}

/// Builds an inventory from `name -> property -> value`.
fn inventory_from(props: BTreeMap<String, BTreeMap<String, String>>) -> Result<Inventory, String> {
    let mut inv = Inventory::default();
    for (name, p) in props {
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("-");
        let kind = get("type");
        if !matches!(kind, "filesystem" | "volume" | "snapshot") {
            // bookmarks and anything newer are not listed
            continue;
        }
        let creation: i64 = get("creation")
            .parse()
            .map_err(|_| format!("{name}: creation is {:?}, not seconds", get("creation")))?;
        let used = number(&name, "used", get("used"))?;
        let referenced = number(&name, "referenced", get("referenced"))?;
        match kind {
            "filesystem" | "volume" => inv.datasets.push(DatasetInfo {
                volume: kind == "volume",
                creation,
                used,
                referenced,
                class: opt_value(get(CLASS_PROPERTY)),
                excluded: get(EXCLUDE_PROPERTY) == "on",
                name,
            }),
            "snapshot" => {
                let Some((dataset, short)) = name.split_once('@') else {
                    return Err(format!("snapshot {name:?} has no '@'"));
                };
                inv.snapshots.push(SnapshotInfo {
                    dataset: dataset.to_owned(),
                    name: short.to_owned(),
                    creation,
                    used,
                    referenced,
                    managed: get(MANAGED_PROPERTY) == "on",
                });
            }
            _ => {}
        }
    }
    inv.snapshots.sort_by(|a, b| {
        (a.dataset.as_str(), a.creation, a.name.as_str()).cmp(&(
            b.dataset.as_str(),
            b.creation,
            b.name.as_str(),
        ))
    });
    Ok(inv)
}

/// Parses `zfs get -H -p -o name,property,value PROPS...` (one `name\tproperty\tvalue` per line).
pub fn parse_get(text: &str) -> Result<Inventory, String> {
    let mut props: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut cols = line.splitn(3, '\t');
        let (Some(name), Some(prop), Some(value)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(format!(
                "line {line:?} does not have three tab-separated columns"
            ));
        };
        props
            .entry(name.to_owned())
            .or_default()
            .insert(prop.to_owned(), value.to_owned());
    }
    inventory_from(props)
}

/// Parses `zfs list -H -p -t all -o name,<INVENTORY_PROPERTIES>` (OpenZFS's parsable list).
pub fn parse_list(text: &str) -> Result<Inventory, String> {
    let mut props: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != INVENTORY_PROPERTIES.len() + 1 {
            return Err(format!(
                "line {line:?} has {} columns, expected {}",
                cols.len(),
                INVENTORY_PROPERTIES.len() + 1
            ));
        }
        let entry = props.entry(cols[0].to_owned()).or_default();
        for (k, v) in INVENTORY_PROPERTIES.iter().zip(&cols[1..]) {
            entry.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    inventory_from(props)
}

/// Parses `zpool list -H -o name,health`.
pub fn parse_pools(text: &str) -> Result<Vec<PoolInfo>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut cols = line.split('\t');
            match (cols.next(), cols.next()) {
                (Some(name), Some(health)) => Ok(PoolInfo {
                    name: name.to_owned(),
                    health: health.to_owned(),
                }),
                _ => Err(format!("line {line:?} is not name<TAB>health")),
            }
        })
        .collect()
}

/// Parses the `size` line of `zfs send -nP` (OpenZFS: `full\t<snap>\t<n>` or
/// `incremental\t<base>\t<snap>\t<n>`, then `size\t<n>`).
pub fn parse_send_estimate(text: &str) -> Result<u64, String> {
    text.lines()
        .find_map(|l| l.strip_prefix("size\t"))
        .ok_or_else(|| format!("no size line in {text:?}"))?
        .trim()
        .parse()
        .map_err(|_| format!("size line in {text:?} is not a number"))
}

/// Parses `zfs holds -H <snap>` (OpenZFS: `name\ttag\ttimestamp`): the hold tags.
pub fn parse_holds(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split('\t').nth(1))
        .map(str::to_owned)
        .collect()
}

/// Parses `zfs get -H -o value receive_resume_token <ds>`: the token, if an interrupted
/// resumable receive left one.
pub fn parse_resume_token(text: &str) -> Option<String> {
    opt_value(text.trim())
}

/// A dataset's space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSpace {
    /// What it and its descendants (snapshots included) take.
    pub used: u64,
    /// What may still be written to it (the pool's free space, less quotas and reservations).
    pub available: u64,
}

/// Parses `zfs get -H -p -o property,value used,available <ds>`.
pub fn parse_space(text: &str) -> Result<DatasetSpace, String> {
    let (mut used, mut available) = (None, None);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (property, value) = line
            .split_once('\t')
            .ok_or_else(|| format!("{line:?} is not `property<TAB>value`"))?;
        let n = value
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{property} {value:?} is not a number of bytes"))?;
        match property {
            "used" => used = Some(n),
            "available" => available = Some(n),
            _ => {}
        }
    }
    match (used, available) {
        (Some(used), Some(available)) => Ok(DatasetSpace { used, available }),
        _ => Err(format!("no used and available in {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_of_a_dataset() {
        // Recorded from zfs-fuse: `zfs get -H -p -o property,value used,available zbt/r`.
        assert_eq!(
            parse_space("used\t2105344\navailable\t207318528\n"),
            Ok(DatasetSpace {
                used: 2_105_344,
                available: 207_318_528
            })
        );
        assert_eq!(
            parse_space("available\t5\nused\t7\n"),
            Ok(DatasetSpace {
                used: 7,
                available: 5
            })
        );
        assert!(parse_space("used\t-\navailable\t5\n").is_err());
        assert!(parse_space("used\t7\n").is_err());
        assert!(parse_space("").is_err());
        assert!(parse_space("used 7\navailable 5\n").is_err());
    }

    /// Recorded on this machine from zfs-fuse:
    /// `zfs get -H -p -r -o name,property,value type,creation,used,referenced,zetaback.io:managed,zetaback.io:class,zetaback.io:exclude tank`.
    const ZFS_FUSE_GET: &str = include_str!("../../tests/fixtures/zfs-fuse-get.txt");
    /// Captured from OpenZFS 2.3.2 in the test VM by e2e/scripts/capture-openzfs-fixtures.sh:
    /// `zfs list -H -p -t all -o name,<INVENTORY_PROPERTIES> -r zbfix`.
    const OPENZFS_LIST: &str = include_str!("../../tests/fixtures/openzfs-2.3.2-list.txt");

    #[test]
    fn parses_zfs_fuse_get() {
        let inv = parse_get(ZFS_FUSE_GET).expect("parses");
        let names: Vec<_> = inv.datasets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["zbfix", "zbfix/data", "zbfix/data/sub"]);
        assert_eq!(inv.datasets[1].class.as_deref(), Some("gold"));
        assert!(inv.datasets[2].excluded);
        assert!(!inv.datasets[1].excluded);
        let snaps: Vec<_> = inv
            .snapshots
            .iter()
            .map(|s| (s.full_name(), s.managed))
            .collect();
        assert_eq!(
            snaps,
            [
                ("zbfix/data@manual".to_owned(), false),
                ("zbfix/data@zb-1".to_owned(), true)
            ]
        );
        assert!(inv.snapshots[0].creation > 1_600_000_000);
        assert!(inv.datasets[1].used > 0);
    }

    #[test]
    fn parses_openzfs_list() {
        let inv = parse_list(OPENZFS_LIST).expect("parses");
        let find = |name: &str| inv.datasets.iter().find(|d| d.name == name);
        let db = find("zbfix/db").expect("zbfix/db listed");
        assert_eq!(db.class.as_deref(), Some("gold"));
        assert!(!db.volume && !db.excluded && db.used > 1_000_000, "{db:?}");
        assert!(find("zbfix/vol").expect("zbfix/vol listed").volume);
        assert!(find("zbfix/db/scratch").expect("scratch listed").excluded);
        assert!(find("zbfix").is_some());
        // The bookmark zbfix/db#zb-1 is no snapshot; the snapshots in creation order.
        let snaps: Vec<_> = inv
            .snapshots_of("zbfix/db")
            .map(|s| (s.name.as_str(), s.managed))
            .collect();
        assert_eq!(snaps, [("zb-1", true), ("manual", false), ("zb-2", true)]);
        assert!(inv.snapshots.iter().all(|s| s.creation > 1_700_000_000));
        assert!(!inv.snapshots.iter().any(|s| s.name.contains('#')));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_get("tank\ttype\tfilesystem\ntank\tcreation\tyesterday\n").is_err());
        assert!(parse_get("tank creation 1\n").is_err());
        assert!(parse_list("tank\tfilesystem\n").is_err());
    }

    /// Captured: `zpool list -H -o name,health zbfix`.
    #[test]
    fn parses_pools() {
        let captured = include_str!("../../tests/fixtures/openzfs-2.3.2-zpool-list.txt");
        let pools = parse_pools(captured).expect("parses");
        assert_eq!(
            pools,
            [PoolInfo {
                name: "zbfix".into(),
                health: "ONLINE".into()
            }]
        );
        let pools = parse_pools("tank\tONLINE\nbackup\tDEGRADED\n").expect("parses");
        assert_eq!(pools[1].health, "DEGRADED");
        assert!(parse_pools("tank ONLINE\n").is_err());
    }

    /// Captured: `zfs send -nP` of zbfix/db@zb-2 (1 MiB + 256 KiB of random data), and of
    /// its incremental from @zb-1 and from the bookmark #zb-1 (the 256 KiB added between).
    #[test]
    fn parses_send_estimates() {
        let full = parse_send_estimate(include_str!(
            "../../tests/fixtures/openzfs-2.3.2-send-nP-full.txt"
        ))
        .expect("full");
        let incremental = parse_send_estimate(include_str!(
            "../../tests/fixtures/openzfs-2.3.2-send-nP-incremental.txt"
        ))
        .expect("incremental");
        let bookmark = parse_send_estimate(include_str!(
            "../../tests/fixtures/openzfs-2.3.2-send-nP-bookmark.txt"
        ))
        .expect("from a bookmark");
        assert!(full > 1_300_000, "{full}");
        assert!((262_144..full / 2).contains(&incremental), "{incremental}");
        assert_eq!(bookmark, incremental);
        assert!(parse_send_estimate("").is_err());
        assert!(parse_send_estimate("size\tmany\n").is_err());
    }

    /// Captured: `zfs holds -H zbfix/db@zb-1` with the hold `zetaback`.
    #[test]
    fn parses_holds() {
        let captured = include_str!("../../tests/fixtures/openzfs-2.3.2-holds.txt");
        assert_eq!(parse_holds(captured), ["zetaback"]);
        assert!(parse_holds("").is_empty());
    }

    /// Captured: `zfs get -H -p -o value receive_resume_token` of an interrupted
    /// `receive -s`.
    #[test]
    fn parses_resume_tokens() {
        assert_eq!(parse_resume_token("-\n"), None);
        let captured = include_str!("../../tests/fixtures/openzfs-2.3.2-resume-token.txt");
        let token = parse_resume_token(captured).expect("a token");
        assert!(token.starts_with("1-"), "{token}");
        assert!(!token.contains(char::is_whitespace));
    }
}
