//! The narrow key-value interface the store is written against, and its RocksDB engine.
//!
//! Everything above this module sees ordered tables of byte keys and byte values, point reads,
//! bounded range scans and atomic batches. That is all a distributed engine would have to offer
//! to replace RocksDB later. This is the only module that names `rocksdb`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The tables of the store. Each is one RocksDB column family; the key layout of each is
/// documented in ARCHITECTURE.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Meta,
    Directory,
    AccountKeys,
    AddressIndex,
    Mailboxes,
    Messages,
    Summaries,
    Changes,
    BlobIndex,
    Blobs,
    Texts,
    Audit,
    Queue,
    Pickups,
    Auth,
    PickupRecipients,
    Deliveries,
    AuditIndex,
    Kept,
    Quarantine,
}

impl Table {
    pub(crate) const ALL: [Table; 20] = [
        Table::Meta,
        Table::Directory,
        Table::AccountKeys,
        Table::AddressIndex,
        Table::Mailboxes,
        Table::Messages,
        Table::Summaries,
        Table::Changes,
        Table::BlobIndex,
        Table::Blobs,
        Table::Texts,
        Table::Audit,
        Table::Queue,
        Table::Pickups,
        Table::Auth,
        Table::PickupRecipients,
        Table::Deliveries,
        Table::AuditIndex,
        Table::Kept,
        Table::Quarantine,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Directory => "directory",
            Table::AccountKeys => "account_keys",
            Table::AddressIndex => "address_index",
            Table::Mailboxes => "mailboxes",
            Table::Messages => "messages",
            Table::Summaries => "summaries",
            Table::Changes => "changes",
            Table::BlobIndex => "blob_index",
            Table::Blobs => "blobs",
            Table::Texts => "texts",
            Table::Audit => "audit",
            Table::Queue => "queue",
            Table::Pickups => "pickups",
            Table::Auth => "auth",
            Table::PickupRecipients => "pickup_recipients",
            Table::Deliveries => "deliveries",
            Table::AuditIndex => "audit_index",
            Table::Kept => "kept",
            Table::Quarantine => "quarantine",
        }
    }
}

/// Whether a write must be on disk before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// The write-ahead log is fsynced before the call returns.
    Synced,
    /// The write is in the log (the OS has it); a later `sync_log` makes it durable.
    Buffered,
}

enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
    DeleteRange(Table, Vec<u8>, Vec<u8>),
}

/// A set of changes applied all at once or not at all.
#[derive(Default)]
pub(crate) struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub(crate) fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(table, key, value));
    }

    pub(crate) fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(Op::Delete(table, key));
    }

    /// Deletes every key in `[from, to)`.
    pub(crate) fn delete_range(&mut self, table: Table, from: Vec<u8>, to: Vec<u8>) {
        self.ops.push(Op::DeleteRange(table, from, to));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What a scan visitor wants next.
pub(crate) enum Scan {
    Continue,
    Stop,
}

/// Called with each key and value of a scan.
pub(crate) type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<Scan> + 'a;

/// The ordered key-value engine under the store.
pub(crate) trait Engine: Send + Sync {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits every pair with `from <= key < to`, in key order, until the visitor says stop.
    fn scan(&self, table: Table, from: &[u8], to: &[u8], visit: &mut Visitor<'_>) -> Result<()>;

    /// How many keys lie in `from <= key < to` (a scan that only counts).
    fn count(&self, table: Table, from: &[u8], to: &[u8]) -> Result<u64> {
        let mut count = 0u64;
        self.scan(table, from, to, &mut |_, _| {
            count += 1;
            Ok(Scan::Continue)
        })?;
        Ok(count)
    }

    /// As `scan`, from the last key before `to` down to `from`.
    fn scan_reverse(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut Visitor<'_>,
    ) -> Result<()>;

    fn write(&self, batch: Batch, durability: Durability) -> Result<()>;

    /// Makes every write so far durable (fsyncs the write-ahead log).
    fn sync_log(&self) -> Result<()>;

    /// Writes memtables out and rewrites the files that hold `[from, to)` of `table`, so that
    /// deleted values there leave the disk files (used when shredding keys).
    fn purge_range(&self, table: Table, from: &[u8], to: &[u8]) -> Result<()>;

    /// Writes every memtable to disk files (tests and backups use it).
    fn flush(&self) -> Result<()>;

    /// A consistent copy of the whole store at this moment in the new folder `dir` (on the
    /// same file system its immutable files are hard links): every write acknowledged before
    /// the call is in it.
    fn checkpoint(&self, dir: &Path) -> Result<()>;
}

/// Values at least this large go to RocksDB blob files instead of the LSM tree, so that
/// compactions do not rewrite message bodies.
const BLOB_VALUE_BYTES_MIN: u64 = 4 * 1024;

pub(crate) struct RocksEngine {
    db: rocksdb::DB,
    path: PathBuf,
}

fn engine_error(op: &'static str, path: &Path, error: rocksdb::Error) -> Error {
    let message = error.into_string();
    // RocksDB holds an advisory lock on the LOCK file while a process has the store open.
    if message.contains("LOCK") && message.contains("lock") {
        return Error::StoreInUse {
            path: path.to_path_buf(),
        };
    }
    Error::Engine {
        op,
        path: path.to_path_buf(),
        message,
    }
}

fn table_options(table: Table) -> rocksdb::Options {
    let mut options = rocksdb::Options::default();
    // Values are encrypted (and bodies already zstd-compressed): RocksDB compression would
    // only spend CPU.
    options.set_compression_type(rocksdb::DBCompressionType::None);
    if table == Table::Blobs {
        options.set_enable_blob_files(true);
        options.set_min_blob_size(BLOB_VALUE_BYTES_MIN);
        options.set_blob_compression_type(rocksdb::DBCompressionType::None);
        options.set_enable_blob_gc(true);
    }
    options
}

fn db_options() -> rocksdb::Options {
    let mut options = rocksdb::Options::default();
    options.set_keep_log_file_num(10);
    options.set_max_log_file_size(16 * 1024 * 1024);
    options.set_compression_type(rocksdb::DBCompressionType::None);
    options
}

impl RocksEngine {
    /// Creates a new, empty store folder. Fails if one exists.
    pub(crate) fn create(path: &Path) -> Result<Self> {
        if path.join("CURRENT").exists() {
            return Err(Error::StoreExists {
                path: path.to_path_buf(),
            });
        }
        let mut options = db_options();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_error_if_exists(true);
        Self::open_with(path, options)
    }

    /// Opens an existing store folder for reading and writing.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        Self::require_existing(path)?;
        let mut options = db_options();
        // Tables added by a newer version appear empty in an older store.
        options.create_missing_column_families(true);
        Self::open_with(path, options)
    }

    fn open_with(path: &Path, options: rocksdb::Options) -> Result<Self> {
        let descriptors = Table::ALL
            .iter()
            .map(|table| rocksdb::ColumnFamilyDescriptor::new(table.name(), table_options(*table)));
        let db = rocksdb::DB::open_cf_descriptors(&options, path, descriptors)
            .map_err(|e| engine_error("open", path, e))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    fn require_existing(path: &Path) -> Result<()> {
        if !path.join("CURRENT").exists() {
            return Err(Error::NoStore {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Reads one key of the meta table without changing a single file of the store folder.
    ///
    /// A read-only RocksDB open still starts a new info log, and starting one renames the old;
    /// so the info log of this open goes to a private scratch folder that is removed after.
    pub(crate) fn read_meta_untouched(path: &Path, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Self::require_existing(path)?;
        let scratch = std::env::temp_dir().join(format!(
            "sealpost-check-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&scratch).map_err(|source| Error::Io {
            path: scratch.clone(),
            source,
        })?;
        let mut options = rocksdb::Options::default();
        options.set_db_log_dir(&scratch);
        let result =
            rocksdb::DB::open_cf_for_read_only(&options, path, [Table::Meta.name()], false)
                .map_err(|e| engine_error("open read-only", path, e))
                .and_then(|db| {
                    let cf = db
                        .cf_handle(Table::Meta.name())
                        .ok_or_else(|| Error::corrupt("the meta table is missing"))?;
                    db.get_cf(cf, key)
                        .map_err(|e| engine_error("read", path, e))
                });
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn cf(&self, table: Table) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(table.name())
            .ok_or_else(|| Error::corrupt(format!("table {} is missing", table.name())))
    }
}

impl Engine for RocksEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(table)?, key)
            .map_err(|e| engine_error("read", &self.path, e))
    }

    fn scan(&self, table: Table, from: &[u8], to: &[u8], visit: &mut Visitor<'_>) -> Result<()> {
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(to.to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(table)?, read);
        iter.seek(from);
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            if let Scan::Stop = visit(key, value)? {
                return Ok(());
            }
            iter.next();
        }
        iter.status()
            .map_err(|e| engine_error("scan", &self.path, e))
    }

    fn scan_reverse(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_lower_bound(from.to_vec());
        read.set_iterate_upper_bound(to.to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(table)?, read);
        iter.seek_to_last();
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            if let Scan::Stop = visit(key, value)? {
                return Ok(());
            }
            iter.prev();
        }
        iter.status()
            .map_err(|e| engine_error("scan", &self.path, e))
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let mut rocks = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(table, key, value) => rocks.put_cf(self.cf(table)?, key, value),
                Op::Delete(table, key) => rocks.delete_cf(self.cf(table)?, key),
                Op::DeleteRange(table, from, to) => {
                    rocks.delete_range_cf(self.cf(table)?, from, to)
                }
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(matches!(durability, Durability::Synced));
        self.db
            .write_opt(rocks, &options)
            .map_err(|e| engine_error("write", &self.path, e))
    }

    fn sync_log(&self) -> Result<()> {
        // A synced write of an empty batch rather than FlushWAL(sync): concurrent synced
        // writes join one write group whose leader fsyncs once for all of them.
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(rocksdb::WriteBatch::default(), &options)
            .map_err(|e| engine_error("sync the log", &self.path, e))
    }

    fn purge_range(&self, table: Table, from: &[u8], to: &[u8]) -> Result<()> {
        self.flush()?;
        let cf = self.cf(table)?;
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(cf, Some(from), Some(to), &options);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let handles: Vec<&rocksdb::ColumnFamily> = Table::ALL
            .iter()
            .map(|t| self.cf(*t))
            .collect::<Result<_>>()?;
        self.db
            .flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())
            .map_err(|e| engine_error("flush", &self.path, e))?;
        self.db
            .flush_wal(true)
            .map_err(|e| engine_error("flush", &self.path, e))
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(|e| engine_error("checkpoint", &self.path, e))?;
        checkpoint
            .create_checkpoint(dir)
            .map_err(|e| engine_error("checkpoint", dir, e))
    }
}
