//! The archive's objects on an S3-compatible object store (feature `s3`), through the
//! `object_store` crate's AWS client (S3 REST API: PutObject, multipart upload,
//! GetObject, HeadObject, ListObjectsV2).
//!
//! [`super::Archive`] stays synchronous: this store owns a small tokio runtime (two
//! worker threads) on which every request runs, and the calling thread waits for the
//! result (`futures::executor::block_on` on the spawned task, which works from any
//! thread, inside another runtime or not). Callers already call the archive from
//! blocking threads (`spawn_blocking`), as they did for its file I/O.

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use super::{ArchiveError, S3Options, io_err};
use crate::metrics;

/// Requests in flight at once for a batch (HEADs of the duplicate check, alert PUTs).
const CONCURRENCY: usize = 16;
/// Part size of a nightly file's multipart upload (S3's minimum is 5 MiB but for the
/// last part).
const PART: usize = 8 << 20;

/// A bucket (and key prefix) of an S3-compatible object store.
pub(super) struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: Option<tokio::runtime::Runtime>,
    /// The server refused a conditional put (`If-None-Match: *`): plain puts after the
    /// HEAD check from then on.
    no_create: AtomicBool,
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's task.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn store_err(key: &str, e: impl std::error::Error + Send + Sync + 'static) -> ArchiveError {
    ArchiveError::ObjectStore {
        key: key.to_owned(),
        source: Box::new(e),
    }
}

impl S3Store {
    /// Connects (lazily: the first request does) to `options.bucket` with the
    /// endpoint, region and credentials of the `AWS_*` environment variables
    /// (`AmazonS3Builder::from_env`), overridden by `options`.
    pub(super) fn open(options: &S3Options) -> Result<Self, ArchiveError> {
        let url = options.url();
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&options.bucket);
        if let Some(e) = &options.endpoint {
            b = b.with_endpoint(e);
        }
        if options.allow_http {
            b = b.with_allow_http(true);
        }
        if let Some(r) = &options.region {
            b = b.with_region(r);
        }
        let store = b.build().map_err(|e| store_err(&url, e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("apflow-archive-s3")
            .enable_all()
            .build()
            .map_err(io_err(Path::new(&url)))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: options.prefix.trim_matches('/').to_owned(),
            url,
            rt: Some(rt),
            no_create: AtomicBool::new(false),
        })
    }

    /// `s3://bucket/prefix`.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// The key of `rel` (a path relative to the archive, `/`-separated).
    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Runs `f`, the operation `op` (one of [`metrics::ARCHIVE_STORE_OPS`]), on the
    /// store's runtime and waits for it; its time and failure are counted here.
    fn block<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, ArchiveError>> + Send + 'static,
    ) -> Result<T, ArchiveError> {
        let Some(rt) = &self.rt else {
            return Err(store_err(&self.url, std::io::Error::other("store closed")));
        };
        let timer = metrics::ARCHIVE_STORE_SECONDS
            .with_label_values(&[op])
            .start_timer();
        let r = futures::executor::block_on(rt.spawn(f))
            .map_err(|e| store_err(&self.url, e))
            .and_then(|r| r);
        timer.observe_duration();
        if r.is_err() {
            metrics::ARCHIVE_STORE_ERRORS_TOTAL
                .with_label_values(&[op])
                .inc();
        }
        r
    }

    /// The object `rel`, or `None` if there is none.
    pub(super) fn get(&self, rel: &str) -> Result<Option<Bytes>, ArchiveError> {
        let (store, key, rel) = (self.store.clone(), self.key(rel), rel.to_owned());
        self.block("get", async move {
            match store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some).map_err(|e| store_err(&rel, e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_err(&rel, e)),
            }
        })
    }

    /// Writes (or overwrites) the object `rel`.
    pub(super) fn put(&self, rel: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        let (store, key, rel) = (self.store.clone(), self.key(rel), rel.to_owned());
        self.block("put", async move {
            store
                .put(&key, PutPayload::from(bytes))
                .await
                .map(drop)
                .map_err(|e| store_err(&rel, e))
        })
    }

    /// Whether each object exists (HEAD requests, [`CONCURRENCY`] at a time).
    pub(super) fn exist(&self, rels: Vec<String>) -> Result<Vec<bool>, ArchiveError> {
        let keys: Vec<(Key, String)> = rels.into_iter().map(|r| (self.key(&r), r)).collect();
        let store = self.store.clone();
        self.block("exist", async move {
            futures::stream::iter(keys)
                .map(|(key, rel)| {
                    let store = store.clone();
                    async move {
                        match store.head(&key).await {
                            Ok(_) => Ok(true),
                            Err(object_store::Error::NotFound { .. }) => Ok(false),
                            Err(e) => Err(store_err(&rel, e)),
                        }
                    }
                })
                .buffered(CONCURRENCY)
                .try_collect()
                .await
        })
    }

    /// Creates each object, never overwriting one that exists: a conditional put
    /// (`If-None-Match: *`, `PutMode::Create`) where the server honours it, else a
    /// plain put (the caller has checked with [`Self::exist`]). Returns, per object,
    /// whether it was created (`false`: it already existed).
    pub(super) fn create(&self, objects: Vec<(String, Bytes)>) -> Result<Vec<bool>, ArchiveError> {
        let objects: Vec<(Key, String, Bytes)> = objects
            .into_iter()
            .map(|(r, b)| (self.key(&r), r, b))
            .collect();
        let store = self.store.clone();
        let conditional = !self.no_create.load(Ordering::Relaxed);
        let (created, refused) = self.block("create", async move {
            let refused = Arc::new(AtomicBool::new(!conditional));
            let created = futures::stream::iter(objects)
                .map(|(key, rel, bytes)| {
                    let (store, refused) = (store.clone(), refused.clone());
                    async move {
                        let payload = PutPayload::from(bytes);
                        if !refused.load(Ordering::Relaxed) {
                            let opts = PutOptions::from(PutMode::Create);
                            match store.put_opts(&key, payload.clone(), opts).await {
                                Ok(_) => return Ok(true),
                                Err(object_store::Error::AlreadyExists { .. }) => {
                                    return Ok(false);
                                }
                                Err(
                                    object_store::Error::NotImplemented { .. }
                                    | object_store::Error::NotSupported { .. },
                                ) => refused.store(true, Ordering::Relaxed),
                                Err(e) => return Err(store_err(&rel, e)),
                            }
                        }
                        store
                            .put(&key, payload)
                            .await
                            .map(|_| true)
                            .map_err(|e| store_err(&rel, e))
                    }
                })
                .buffered(CONCURRENCY)
                .try_collect::<Vec<bool>>()
                .await?;
            Ok((created, refused.load(Ordering::Relaxed)))
        })?;
        if refused && conditional {
            tracing::warn!(
                store = %self.url,
                "The object store does not honour conditional puts; duplicates are checked with HEAD only."
            );
        }
        self.no_create.fetch_or(refused, Ordering::Relaxed);
        Ok(created)
    }

    /// The names (last path segment) of the objects under `rel/`.
    pub(super) fn list(&self, rel: &str) -> Result<Vec<String>, ArchiveError> {
        let (store, key, rel) = (self.store.clone(), self.key(rel), rel.to_owned());
        self.block("list", async move {
            store
                .list(Some(&key))
                .map_ok(|m| m.location.filename().unwrap_or_default().to_owned())
                .try_collect()
                .await
                .map_err(|e| store_err(&rel, e))
        })
    }

    /// The size of the object `rel`, if it exists.
    pub(super) fn size(&self, rel: &str) -> Result<Option<u64>, ArchiveError> {
        let (store, key, rel) = (self.store.clone(), self.key(rel), rel.to_owned());
        self.block("size", async move {
            match store.head(&key).await {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_err(&rel, e)),
            }
        })
    }

    /// Uploads the local file `path` whole as the object `rel` (a multipart upload in
    /// [`PART`]-byte parts): the object changes atomically, from its old contents to
    /// the file's, when the upload completes.
    pub(super) fn upload(&self, rel: &str, path: &Path) -> Result<(), ArchiveError> {
        let (store, key, rel) = (self.store.clone(), self.key(rel), rel.to_owned());
        let path = path.to_owned();
        self.block("upload", async move {
            let mut file = std::fs::File::open(&path).map_err(io_err(&path))?;
            let upload = store
                .put_multipart(&key)
                .await
                .map_err(|e| store_err(&rel, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = Vec::with_capacity(PART);
            loop {
                // Up to one part (fewer only at the end of the file).
                buf.clear();
                let n = match (&mut file).take(PART as u64).read_to_end(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        // Best effort: the upload is abandoned either way.
                        let _ = w.abort().await;
                        return Err(io_err(&path)(e));
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(2).await {
                    let _ = w.abort().await;
                    return Err(store_err(&rel, e));
                }
                w.write(&buf);
            }
            // A failed completion is aborted by `finish` itself.
            w.finish().await.map(drop).map_err(|e| store_err(&rel, e))
        })
    }

    /// Downloads the object `rel` to the local file `path` (through a temporary file
    /// renamed into place). Returns `false` if there is no such object.
    pub(super) fn download(&self, rel: &str, path: &Path) -> Result<bool, ArchiveError> {
        let (store, key, rel) = (self.store.clone(), self.key(rel), rel.to_owned());
        let path: PathBuf = path.to_owned();
        self.block("download", async move {
            let r = match store.get(&key).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(store_err(&rel, e)),
            };
            let tmp = path.with_extension("download");
            let mut out =
                std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_err(&tmp))?);
            let mut chunks = r.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| store_err(&rel, e))?;
                out.write_all(&chunk).map_err(io_err(&tmp))?;
            }
            out.into_inner()
                .map_err(|e| io_err(&tmp)(e.into_error()))?
                .sync_all()
                .map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            Ok(true)
        })
    }
}
