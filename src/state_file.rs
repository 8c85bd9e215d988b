//! Files of the state directory (snapshot progress, sink cursors, marks): each replaced whole
//! and durably, readable by walcast's user only (they name slots, tables and positions).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Write `content` to `path` through the temporary file `tmp` renamed over it, durable once
/// this returns (file 0600, directory created 0700). Blocking: callers on the runtime thread
/// use `spawn_blocking`.
pub(crate) fn replace(path: &Path, tmp: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp)?;
    // A temporary file left by a killed run keeps its mode when reopened.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = dir {
        // The rename is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
