//! A service-account directory laid out exactly like the kubelet's `AtomicWriter` lays out
//! projected volumes, so rotation tests exercise the real symlink dance (timestamped dir,
//! `..data` swapped by rename, user-visible symlinks through `..data`), plus kubeconfig files.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::TempDir;

/// The payload file names the kubelet projects for a service-account token volume.
pub const TOKEN: &str = "token";
pub const CA_CRT: &str = "ca.crt";
pub const NAMESPACE: &str = "namespace";
const FILES: [&str; 3] = [TOKEN, CA_CRT, NAMESPACE];

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// A scratch directory holding a kubelet-style `serviceaccount/` directory and any kubeconfig
/// files a test writes.
pub struct World {
    // Held only so the directory lives as long as the World.
    _tmp: Option<TempDir>,
    base: PathBuf,
    sa_dir: PathBuf,
    counter: AtomicU64,
}

impl World {
    /// A World in a fresh temporary directory, removed on drop. `sa_dir()` exists but is
    /// empty until [`World::write`].
    pub fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("ka-world-")
            .tempdir()
            .expect("create temp dir");
        let base = tmp.path().to_path_buf();
        let mut w = World::at(&base);
        w._tmp = Some(tmp);
        w
    }

    /// A World rooted at `base` (kept after drop: the `fake-apiserver` binary uses this).
    /// A `serviceaccount/` left there by an earlier run is removed first.
    pub fn at(base: &Path) -> World {
        let sa_dir = base.join("serviceaccount");
        if sa_dir.exists() {
            fs::remove_dir_all(&sa_dir).expect("remove old serviceaccount dir");
        }
        fs::create_dir_all(&sa_dir).expect("create serviceaccount dir");
        World {
            _tmp: None,
            base: base.to_path_buf(),
            sa_dir,
            counter: AtomicU64::new(0),
        }
    }

    /// A new World with a service account already written.
    pub fn with_sa(token: &str, ca_pem: &str, namespace: &str) -> World {
        let w = World::new();
        w.write(token, ca_pem, namespace);
        w
    }

    /// The root scratch directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The service-account directory (what `--service-account-dir` points at).
    pub fn sa_dir(&self) -> PathBuf {
        self.sa_dir.clone()
    }

    pub fn token_path(&self) -> PathBuf {
        self.sa_dir.join(TOKEN)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.sa_dir.join(CA_CRT)
    }

    pub fn namespace_path(&self) -> PathBuf {
        self.sa_dir.join(NAMESPACE)
    }

    /// Publishes a complete payload the way the kubelet does (see [`World::rotate`]); the
    /// first call also creates the user-visible symlinks.
    pub fn write(&self, token: &str, ca_pem: &str, namespace: &str) {
        self.publish(&[(TOKEN, token), (CA_CRT, ca_pem), (NAMESPACE, namespace)]);
    }

    /// Replaces the token and/or CA exactly as the kubelet's `AtomicWriter` does: a new
    /// timestamped directory with every file (unchanged ones copied), a `..data_tmp` symlink
    /// to it, `rename(..data_tmp, ..data)` as the single atomic switch, then removal of the old
    /// timestamped directory. A reader holding an old file open keeps its contents; a reader
    /// opening `token` afterwards sees only the new one.
    pub fn rotate(&self, token: Option<&str>, ca_pem: Option<&str>) {
        let current = |name: &str| {
            fs::read_to_string(self.sa_dir.join(DATA).join(name))
                .unwrap_or_else(|e| panic!("read current {name}: {e} (rotate before write?)"))
        };
        let token = token.map_or_else(|| current(TOKEN), str::to_owned);
        let ca = ca_pem.map_or_else(|| current(CA_CRT), str::to_owned);
        let ns = current(NAMESPACE);
        self.publish(&[(TOKEN, &token), (CA_CRT, &ca), (NAMESPACE, &ns)]);
    }

    /// The timestamped payload directories currently present (normally exactly one).
    pub fn timestamp_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = fs::read_dir(&self.sa_dir)
            .expect("read sa dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA && n != DATA_TMP)
            .collect();
        dirs.sort();
        dirs
    }

    /// Where `..data` points now (a timestamped directory name).
    pub fn data_target(&self) -> String {
        fs::read_link(self.sa_dir.join(DATA))
            .expect("read ..data")
            .to_string_lossy()
            .into_owned()
    }

    fn publish(&self, files: &[(&str, &str)]) {
        let old = fs::read_link(self.sa_dir.join(DATA)).ok();

        // The kubelet names these `..<UTC timestamp>.<random>`; a counter keeps them unique
        // and ordered.
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let ts = format!("..2026_11_27_07_00_00.{n:09}");
        let ts_dir = self.sa_dir.join(&ts);
        fs::create_dir(&ts_dir).expect("create timestamped dir");
        for (name, content) in files {
            fs::write(ts_dir.join(name), content).expect("write payload file");
        }

        // The kubelet's link targets are relative, so the volume works wherever it is mounted.
        let tmp = self.sa_dir.join(DATA_TMP);
        let _ = fs::remove_file(&tmp);
        symlink(&ts, &tmp).expect("symlink ..data_tmp");
        fs::rename(&tmp, self.sa_dir.join(DATA)).expect("rename ..data_tmp -> ..data");

        for name in FILES {
            let link = self.sa_dir.join(name);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new(DATA).join(name), &link).expect("user-visible symlink");
            }
        }

        if let Some(old) = old {
            fs::remove_dir_all(self.sa_dir.join(old)).expect("remove old timestamped dir");
        }
    }

    /// Writes a kubeconfig with one cluster/user/context for `server`, trusting `ca_path` and
    /// authenticating with `token`; returns its path.
    pub fn kubeconfig(&self, server: &str, ca_path: &Path, token: &str) -> PathBuf {
        self.kubeconfig_with(server, Some(ca_path), Some(token), None)
    }

    /// Like [`World::kubeconfig`] but every credential optional, plus an optional client
    /// certificate/key pair given as file paths (for mutual TLS).
    pub fn kubeconfig_with(
        &self,
        server: &str,
        ca_path: Option<&Path>,
        token: Option<&str>,
        client_cert: Option<(&Path, &Path)>,
    ) -> PathBuf {
        let mut cluster = format!("    server: {}\n", yaml_str(server));
        if let Some(ca) = ca_path {
            cluster += &format!(
                "    certificate-authority: {}\n",
                yaml_str(&ca.to_string_lossy())
            );
        }
        let mut user = String::new();
        if let Some(t) = token {
            user += &format!("    token: {}\n", yaml_str(t));
        }
        if let Some((cert, key)) = client_cert {
            user += &format!(
                "    client-certificate: {}\n    client-key: {}\n",
                yaml_str(&cert.to_string_lossy()),
                yaml_str(&key.to_string_lossy())
            );
        }
        if user.is_empty() {
            user = "    {}\n".into();
        }
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n{cluster}\
             users:\n- name: fake\n  user:\n{user}\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\npreferences: {{}}\n"
        );
        self.kubeconfig_yaml(&yaml)
    }

    /// Writes `yaml` verbatim as a new kubeconfig file; returns its path.
    pub fn kubeconfig_yaml(&self, yaml: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let path = self.base.join(format!("kubeconfig-{n}"));
        fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    /// Writes `content` to a new file under the base directory; returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.base.join(name);
        fs::write(&path, content).expect("write file");
        path
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}
