//! The stored login: `{url, token, org, ca_file}` in the user's config directory.
//!
//! Where: `$GATE_CONFIG_DIR/config.json` when set, else `$XDG_CONFIG_HOME/gate/config.json`,
//! else `~/.config/gate/config.json`. A directory the CLI creates is made 0700; an existing
//! one is used as it is (never chmod-ed: it may be `$HOME`), but only when it belongs to the
//! user and nobody else may write to it, since another user who may write there could swap
//! the file. The file is created 0600 (a temporary file with that mode, renamed over the
//! old one), so the token is never readable by anyone else, not even for a moment.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file name inside the config directory.
pub const FILE_NAME: &str = "config.json";

/// What `gate login` stores.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub url: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Never shows the token.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("token", &"***")
            .field("org", &self.org)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The config directory from the environment (see the module docs).
pub fn dir() -> anyhow::Result<PathBuf> {
    dir_from(|name| std::env::var_os(name))
}

/// [`dir`] with the environment as a function, for tests.
pub fn dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> anyhow::Result<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("GATE_CONFIG_DIR") {
        return Ok(dir);
    }
    if let Some(xdg) = set("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("gate"));
    }
    let home = set("HOME")
        .context("cannot find a config directory: set GATE_CONFIG_DIR, XDG_CONFIG_HOME or HOME")?;
    Ok(home.join(".config").join("gate"))
}

/// The stored login in `dir`, if there is one. A file others may read is still used, with
/// a warning.
pub fn load(dir: &Path) -> anyhow::Result<Option<Config>> {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "gate: warning: {} is readable by others (mode {:o}); run `chmod 600` on it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    let config: Config = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a Gate login (run `gate login` again)",
            path.display()
        )
    })?;
    Ok(Some(config))
}

/// Stores `config` in `dir` (created 0700 when missing; an existing one must be the user's
/// and writable by nobody else), replacing any previous login atomically. Returns the
/// file's path.
pub fn save(dir: &Path, config: &Config) -> anyhow::Result<PathBuf> {
    prepare_dir(dir)?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| -> anyhow::Result<()> {
        let mut file = private_file(&tmp)?;
        let mut body = serde_json::to_vec_pretty(config)?;
        body.push(b'\n');
        file.write_all(&body)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(path)
}

/// Removes the stored login. `Ok(None)` when there was none.
pub fn remove(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let path = dir.join(FILE_NAME);
    match fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Makes sure the token may be written in `dir`: creates it 0700 (its missing parents
/// too, like `mkdir -p -m 700`) or checks the existing one, which is left as it is.
#[cfg(unix)]
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        // Ours: exactly 0700 whatever the umask.
        Ok(()) => {
            return fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", dir.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    // An existing directory is never changed (it may be $HOME, or /tmp), only checked.
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let mode = meta.permissions().mode();
    if meta.uid() != me {
        anyhow::bail!(
            "not storing the token in {}: the directory belongs to another user (uid {}); \
             set GATE_CONFIG_DIR to a directory of your own",
            dir.display(),
            meta.uid()
        );
    }
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "not storing the token in {}: others may write to the directory (mode {:o}), so \
             they could replace the file; set GATE_CONFIG_DIR to a directory only you may \
             write to",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// A new file only the owner may read or write, from the moment it exists.
#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn config() -> Config {
        Config {
            url: "https://control.example.com:8080".into(),
            token: "tok-secret-123".into(),
            org: Some("0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee".into()),
            ca_file: Some(PathBuf::from("/etc/gate/ca.pem")),
        }
    }

    #[test]
    fn the_directory_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            dir_from(env(&[
                ("GATE_CONFIG_DIR", "/g"),
                ("XDG_CONFIG_HOME", "/x"),
                ("HOME", "/h")
            ]))
            .unwrap(),
            PathBuf::from("/g")
        );
        assert_eq!(
            dir_from(env(&[
                ("GATE_CONFIG_DIR", ""),
                ("XDG_CONFIG_HOME", "/x"),
                ("HOME", "/h")
            ]))
            .unwrap(),
            PathBuf::from("/x/gate")
        );
        // A relative XDG_CONFIG_HOME is invalid per the spec and ignored.
        assert_eq!(
            dir_from(env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.config/gate")
        );
        assert!(dir_from(env(&[])).is_err());
    }

    #[test]
    fn save_load_and_remove_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("gate");
        assert_eq!(load(&dir).unwrap(), None);
        let path = save(&dir, &config()).unwrap();
        assert_eq!(path, dir.join(FILE_NAME));
        assert_eq!(load(&dir).unwrap(), Some(config()));
        // Replacing keeps one file and no temporary leftovers.
        let mut other = config();
        other.org = None;
        other.ca_file = None;
        save(&dir, &other).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(other));
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from(FILE_NAME)]);
        // Optional fields are left out, not written as null.
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("org") && !text.contains("ca_file"), "{text}");
        assert_eq!(remove(&dir).unwrap(), Some(path));
        assert_eq!(remove(&dir).unwrap(), None);
        assert_eq!(load(&dir).unwrap(), None);
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    fn set_mode(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_created_directory_is_private_and_so_is_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config").join("gate");
        let path = save(&dir, &config()).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(dir.parent().unwrap()), 0o700, "a created parent too");
        assert_eq!(mode(&path), 0o600);
        // An old world-readable file is replaced by a private one.
        set_mode(&path, 0o644);
        save(&dir, &config()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_directory_is_used_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        // Like $HOME: 0755 stays 0755 (and a missing parent is not needed).
        let dir = tmp.path().join("home");
        fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        let path = save(&dir, &config()).unwrap();
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load(&dir).unwrap(), Some(config()));
        // A file is no place for the login.
        let err = save(&dir.join(FILE_NAME), &config()).unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_others_may_write_to_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, open) in [("world", 0o777), ("group", 0o770), ("sticky", 0o1777)] {
            let dir = tmp.path().join(name);
            fs::create_dir(&dir).unwrap();
            set_mode(&dir, open);
            let err = save(&dir, &config()).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("others may write"), "{name}: {msg}");
            assert!(msg.contains("GATE_CONFIG_DIR"), "{name}: {msg}");
            assert_eq!(mode(&dir), open, "{name}: the mode is not changed");
            assert_eq!(
                fs::read_dir(&dir).unwrap().count(),
                0,
                "{name}: nothing is written"
            );
        }
        // Another user's directory (only root can make one to test with).
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let dir = tmp.path().join("theirs");
            fs::create_dir(&dir).unwrap();
            set_mode(&dir, 0o755);
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            let err = save(&dir, &config()).unwrap_err();
            assert!(format!("{err:#}").contains("another user"), "{err:#}");
            assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_and_debug_hides_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(FILE_NAME), b"{not json").unwrap();
        let err = load(tmp.path()).unwrap_err();
        assert!(format!("{err:#}").contains("gate login"), "{err:#}");
        let shown = format!("{:?}", config());
        assert!(!shown.contains("tok-secret-123"), "{shown}");
    }
}
