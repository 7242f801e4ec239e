//! Byte I/O over `ObjectStore` for the decoders, which run on blocking threads.
//!
//! [`StoreReader`] turns ranged GETs into a `std::io::Read`, fetching the next block while the
//! caller decodes the current one, so the same decoders read local files and blobs alike.

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use ferry_engine::{Error, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::runtime::Handle;

/// Bytes fetched per ranged GET.
pub const DEFAULT_READ_BLOCK: u64 = 2 << 20;

/// The smallest read block.
pub const MIN_READ_BLOCK: u64 = 256 << 10;

/// The read block for a job: its readers' blocks (one in use, one read ahead, and the
/// decoder's buffer of the same size) take about an eighth of the memory budget, between
/// [`MIN_READ_BLOCK`] and [`DEFAULT_READ_BLOCK`]. They are not charged to the budget, so a
/// small budget gets small blocks.
pub fn read_block_for(settings: &ferry_engine::config::JobSettings) -> u64 {
    let readers = settings.parallel_copies.get() as u64;
    (settings.max_buffer_bytes / 8 / (3 * readers).max(1)).clamp(MIN_READ_BLOCK, DEFAULT_READ_BLOCK)
}

/// The settings of a job with a budget of `budget_mib` MiB over `parallel` copies (tests of
/// what follows the budget).
#[cfg(test)]
pub(crate) fn settings_with(budget_mib: u64, parallel: usize) -> ferry_engine::config::JobSettings {
    let mut settings = ferry_engine::config::JobSettings::new("j");
    settings.max_buffer_bytes = budget_mib << 20;
    settings.parallel_copies = std::num::NonZeroUsize::new(parallel).expect("at least one copy");
    settings
}

/// Deletes `files` from `store`.
pub async fn delete_listed(
    store: &dyn ObjectStore,
    files: &[object_store::ObjectMeta],
) -> Result<()> {
    for file in files {
        store
            .delete(&file.location)
            .await
            .map_err(|e| store_error("delete", &file.location, e))?;
    }
    Ok(())
}

/// Deletes every object under `prefix`; nothing there is fine.
pub async fn delete_under(store: &dyn ObjectStore, prefix: &Path) -> Result<()> {
    use futures::TryStreamExt;
    let listed: Vec<_> = store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| store_error("list", prefix, e))?;
    delete_listed(store, &listed).await
}

/// Folds an object store error into the engine's error, naming the path.
pub fn store_error(what: &str, path: &Path, e: object_store::Error) -> Error {
    // Some backends report HTTP failures as `Generic` with the status in the text.
    let text = e.to_string();
    if ferry_engine::error::is_disk_full(&e) {
        return Error::disk_full(format!("{what} /{path}")).with_source(e);
    }
    let denied = text.contains("403 Forbidden") || text.contains("401 Unauthorized");
    match e {
        object_store::Error::NotFound { .. } => {
            Error::invalid_input(format!("{what} {path}: not found; check the path"))
        }
        _ if text.contains("ContainerNotFound") => Error::invalid_input(format!(
            "{what} {path}: the container does not exist; create it first"
        )),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Error::new(
            ferry_engine::ErrorKind::Auth,
            format!(
                "{what} {path}: access denied; check the connection's credentials and their rights"
            ),
        )
        .with_source(e),
        _ if denied => Error::new(
            ferry_engine::ErrorKind::Auth,
            format!(
                "{what} {path}: access denied; check the connection's credentials and their rights"
            ),
        )
        .with_source(e),
        other => Error::store(format!("{what} {path}"))
            .with_retryable(true)
            .with_source(other),
    }
}

/// A `Read` over a byte range of an object, with one block of read-ahead.
pub struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    handle: Handle,
    next: u64,
    end: u64,
    block: u64,
    current: Bytes,
    ahead: Option<ferry_engine::task::OwnedTask<object_store::Result<Bytes>>>,
}

impl StoreReader {
    /// Reads `range` of `path`. Call from a blocking thread of the runtime `handle`.
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, range: Range<u64>, handle: Handle) -> Self {
        Self::sized(store, path, range, handle, DEFAULT_READ_BLOCK)
    }

    /// [`StoreReader::new`], in blocks of `block` bytes.
    pub fn sized(
        store: Arc<dyn ObjectStore>,
        path: Path,
        range: Range<u64>,
        handle: Handle,
        block: u64,
    ) -> Self {
        let mut reader = Self {
            store,
            path,
            handle,
            next: range.start,
            end: range.end,
            block: block.max(1),
            current: Bytes::new(),
            ahead: None,
        };
        reader.fetch_ahead();
        reader
    }

    fn fetch_ahead(&mut self) {
        if self.next >= self.end {
            self.ahead = None;
            return;
        }
        let range = self.next..(self.next + self.block).min(self.end);
        self.next = range.end;
        let (store, path) = (self.store.clone(), self.path.clone());
        self.ahead = Some(ferry_engine::task::spawn_on(&self.handle, async move {
            store.get_range(&path, range).await
        }));
    }

    /// The next block, or `None` at the end of the range.
    pub fn next_block(&mut self) -> Result<Option<Bytes>> {
        if !self.current.is_empty() {
            return Ok(Some(std::mem::take(&mut self.current)));
        }
        let Some(ahead) = self.ahead.take() else {
            return Ok(None);
        };
        let block = self
            .handle
            .block_on(ahead)
            .map_err(|e| Error::internal(format!("read task of {}: {e}", self.path)))?
            .map_err(|e| store_error("read", &self.path, e))?;
        self.fetch_ahead();
        Ok(Some(block))
    }
}

impl Read for StoreReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.current.is_empty() {
            match self.next_block() {
                Ok(Some(block)) => self.current = block,
                Ok(None) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

impl Drop for StoreReader {
    fn drop(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            ahead.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_blocks_follow_the_budget_within_their_bounds() {
        let block = |budget_mib, parallel| read_block_for(&settings_with(budget_mib, parallel));
        // 64 MiB over 4 readers: 64 MiB / 8 / 12 = 699,050 bytes.
        assert_eq!(block(64, 4), (64 << 20) / 8 / 12);
        assert_eq!(
            block(16, 4),
            MIN_READ_BLOCK,
            "a small budget: the smallest block"
        );
        assert_eq!(
            block(1024, 1),
            DEFAULT_READ_BLOCK,
            "a large one: the default"
        );
    }
}
