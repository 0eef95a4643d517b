//! Tenant-scoped collections of documents: create, list, delete; upsert and delete documents
//! (chunked, embedded, stored with their provenance); stats. Writes to one collection are
//! serialised (its `generation` row is the lock, on SQLite and PostgreSQL alike); a new version
//! replaces its document's chunks in the same transaction, and the embedded vector index is
//! updated before the write returns — so the next query sees it (read-your-writes), and no
//! query ever sees a superseded version (queries join chunks to their document's current
//! version). Search lives in `search.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value as Json};
use sluice_store::{Backend, Store};
use sqlx::Row;

use crate::embed::Embedders;
use crate::error::RetrievalError;
use crate::index::VectorIndex;
use crate::sql::{Params, Value};

/// Chunk size when a collection does not say (tokens, special tokens included).
pub const DEFAULT_CHUNK_SIZE: usize = 256;
/// Overlap when a collection does not say.
pub const DEFAULT_CHUNK_OVERLAP: usize = 32;

/// What a new collection is to be.
#[derive(Debug, Clone, Default)]
pub struct CollectionSpec {
    /// Name, unique within the tenant.
    pub name: String,
    /// Embedding model (default: the only one served).
    pub model: Option<String>,
    /// Tokens per chunk.
    pub chunk_size: Option<usize>,
    /// Tokens shared by consecutive chunks.
    pub chunk_overlap: Option<usize>,
}

/// A collection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Collection {
    /// Internal id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Embedding model.
    pub model: String,
    /// Vector dimension.
    pub dim: usize,
    /// Tokens per chunk.
    pub chunk_size: usize,
    /// Overlap.
    pub chunk_overlap: usize,
    /// Creation time (Unix ms).
    pub created_ms: i64,
}

/// A document to upsert.
#[derive(Debug, Clone, Default)]
pub struct DocumentInput {
    /// Id, unique within the collection.
    pub id: String,
    /// Text.
    pub text: String,
    /// Metadata (a JSON object).
    pub metadata: Map<String, Json>,
    /// Version; must exceed the stored one (default: stored + 1).
    pub version: Option<i64>,
    /// When the source last changed (Unix ms; default now).
    pub updated_ms: Option<i64>,
    /// Expires this long after `updated_ms`.
    pub ttl_ms: Option<i64>,
}

/// A document with its chunks and their vectors, ready to write.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The document.
    pub doc: DocumentInput,
    /// Its chunks (their `ids` may be empty).
    pub chunks: Vec<crate::chunk::Chunk>,
    /// One vector per chunk.
    pub vectors: Vec<Vec<f32>>,
}

fn check_documents<'a>(docs: impl Iterator<Item = &'a DocumentInput>) -> Result<(), RetrievalError> {
    let mut seen = std::collections::HashSet::new();
    for d in docs {
        valid_name("document id", &d.id)?;
        if d.text.trim().is_empty() {
            return Err(RetrievalError::Invalid(format!("document {:?} has no text", d.id)));
        }
        if !seen.insert(d.id.as_str()) {
            return Err(RetrievalError::Invalid(format!("document {:?} appears twice", d.id)));
        }
    }
    Ok(())
}

/// What an upsert stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Upserted {
    /// Document id.
    pub id: String,
    /// Its version now.
    pub version: i64,
    /// Chunks it was split into.
    pub chunks: usize,
    /// Tokens embedded for it (special tokens included; 0 when the vectors came with it).
    pub tokens: usize,
}

/// The oldest document of a collection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Oldest {
    /// Document id.
    pub id: String,
    /// Its `updated_at` (Unix ms).
    pub updated_ms: i64,
    /// Age in seconds.
    pub age_seconds: f64,
}

/// Figures of a collection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    /// Documents stored (expired ones included until deleted).
    pub documents: i64,
    /// Chunks of current versions.
    pub chunks: i64,
    /// Documents past their TTL.
    pub expired: i64,
    /// The least recently updated document.
    pub oldest: Option<Oldest>,
    /// Vectors in the embedded index (None on PostgreSQL, where pgvector holds them).
    pub index_vectors: Option<usize>,
}

/// The embedded index of one collection and the generation it reflects.
pub(crate) struct Loaded {
    pub(crate) vectors: VectorIndex,
    pub(crate) generation: i64,
}

/// Collections over a store.
pub struct Collections {
    pub(crate) store: Store,
    pub(crate) embedders: Embedders,
    /// Where embedded indexes are kept (SQLite).
    index_dir: PathBuf,
    pub(crate) indexes: Mutex<HashMap<String, Arc<tokio::sync::RwLock<Option<Loaded>>>>>,
    /// PostgreSQL: common lexemes by the planner's statistics, and when they were read.
    pub(crate) common_words: CommonWords,
}

/// Common lexemes (None: no statistics yet) and when they were read.
pub(crate) type CommonWords = Mutex<Option<(std::time::Instant, Option<Arc<std::collections::HashSet<String>>>)>>;

impl std::fmt::Debug for Collections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collections").field("backend", &self.store.backend()).field("index_dir", &self.index_dir).finish()
    }
}

const MIGRATIONS_SQLITE: &[(i64, &str, &str)] =
    &[(101, "sqlite_0101_collections.sql", include_str!("../migrations/sqlite_0101_collections.sql"))];
const MIGRATIONS_POSTGRES: &[(i64, &str, &str)] =
    &[(101, "postgres_0101_collections.sql", include_str!("../migrations/postgres_0101_collections.sql"))];

const COLLECTION_COLUMNS: &str = "id, name, model, dim, chunk_size, chunk_overlap, created_ms";

fn collection(r: &sqlx::any::AnyRow) -> Result<Collection, sqlx::Error> {
    Ok(Collection {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        model: r.try_get("model")?,
        dim: r.try_get::<i64, _>("dim")? as usize,
        chunk_size: r.try_get::<i64, _>("chunk_size")? as usize,
        chunk_overlap: r.try_get::<i64, _>("chunk_overlap")? as usize,
        created_ms: r.try_get("created_ms")?,
    })
}

fn valid_name(kind: &str, s: &str) -> Result<(), RetrievalError> {
    let ok = !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok { Ok(()) } else { Err(RetrievalError::Invalid(format!("{kind} {s:?} must be 1-128 characters of A-Z, a-z, 0-9, - _ . :"))) }
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // Ids need only be unique, not secret: std's randomly seeded hasher over time and a counter.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(sluice_store::now_ms());
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("col_{:016x}", h.finish())
}

/// Little-endian f32 bytes of a vector.
pub(crate) fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// pgvector's text form of a vector.
pub(crate) fn to_pgvector(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 12);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

impl Collections {
    /// Over `store` (its retrieval tables are created if missing), embedding with `embedders`;
    /// embedded vector indexes are kept in `index_dir`.
    pub async fn open(store: Store, embedders: Embedders, index_dir: PathBuf) -> Result<Self, RetrievalError> {
        let list = if store.backend() == Backend::Postgres { MIGRATIONS_POSTGRES } else { MIGRATIONS_SQLITE };
        sluice_store::migrate::run_list(&store, list).await?;
        Ok(Self { store, embedders, index_dir, indexes: Mutex::new(HashMap::new()), common_words: Mutex::new(None) })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn is_postgres(&self) -> bool {
        self.store.backend() == Backend::Postgres
    }

    pub(crate) fn index_path(&self, collection_id: &str) -> PathBuf {
        self.index_dir.join(format!("{collection_id}.usearch"))
    }

    /// Creates a collection for `tenant`.
    pub async fn create(&self, tenant: &str, spec: &CollectionSpec) -> Result<Collection, RetrievalError> {
        valid_name("collection name", &spec.name)?;
        let model = match &spec.model {
            Some(m) => m.clone(),
            None if self.embedders.len() == 1 => self.embedders.keys().next().cloned().unwrap_or_default(),
            None => return Err(RetrievalError::Invalid("name the embedding model (`model`): several are served".into())),
        };
        let svc = self.embedders.get(&model).ok_or_else(|| RetrievalError::Invalid(format!("no embedding model named {model:?}")))?;
        let chunk_size = spec.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE.min(svc.max_tokens()));
        let chunk_overlap = spec.chunk_overlap.unwrap_or(DEFAULT_CHUNK_OVERLAP.min(chunk_size / 4));
        if chunk_size > svc.max_tokens() || chunk_overlap + svc.model().special_tokens() >= chunk_size {
            return Err(RetrievalError::Invalid(format!(
                "chunk_size must be at most {} and larger than chunk_overlap + {}",
                svc.max_tokens(),
                svc.model().special_tokens()
            )));
        }
        let c = Collection { id: random_id(), name: spec.name.clone(), model, dim: svc.dim(), chunk_size, chunk_overlap, created_ms: sluice_store::now_ms() };
        let inserted = sqlx::query(
            "INSERT INTO collections (id, tenant_id, name, model, dim, chunk_size, chunk_overlap, created_ms, generation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)",
        )
        .bind(&c.id)
        .bind(tenant)
        .bind(&c.name)
        .bind(&c.model)
        .bind(c.dim as i64)
        .bind(c.chunk_size as i64)
        .bind(c.chunk_overlap as i64)
        .bind(c.created_ms)
        .execute(self.store.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                return Err(RetrievalError::Conflict(format!("a collection named {:?} exists", c.name)));
            }
            Err(e) => return Err(e.into()),
        }
        if self.is_postgres() {
            // One HNSW index per collection: a partial index over its rows, at its dimension.
            let sql = format!(
                "CREATE INDEX IF NOT EXISTS chunks_hnsw_{id} ON chunks USING hnsw ((embedding::vector({dim})) vector_cosine_ops) \
                 WHERE collection_id = '{id}'",
                id = c.id,
                dim = c.dim
            );
            sqlx::raw_sql(&sql).execute(self.store.pool()).await?;
        }
        Ok(c)
    }

    /// The tenant's collections, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<Collection>, RetrievalError> {
        let rows = sqlx::query(&format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant_id = $1 ORDER BY name"))
            .bind(tenant)
            .fetch_all(self.store.pool())
            .await?;
        Ok(rows.iter().map(collection).collect::<Result<_, _>>()?)
    }

    /// One of the tenant's collections; another tenant's is NotFound, like one never made.
    pub async fn get(&self, tenant: &str, name: &str) -> Result<Collection, RetrievalError> {
        let row = sqlx::query(&format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant_id = $1 AND name = $2"))
            .bind(tenant)
            .bind(name)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(collection).transpose()?.ok_or_else(|| RetrievalError::NotFound(format!("no collection named {name:?}")))
    }

    /// Deletes a collection with its documents, chunks and index.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), RetrievalError> {
        let c = self.get(tenant, name).await?;
        let slot = self.slot(&c.id);
        let mut guard = slot.write().await;
        let mut tx = self.store.pool().begin().await?;
        for sql in ["DELETE FROM chunks WHERE collection_id = $1", "DELETE FROM documents WHERE collection_id = $1", "DELETE FROM collections WHERE id = $1"] {
            sqlx::query(sql).bind(&c.id).execute(&mut *tx).await?;
        }
        if !self.is_postgres() {
            sqlx::query("DELETE FROM chunks_fts WHERE collection_id = $1").bind(&c.id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if self.is_postgres() {
            sqlx::raw_sql(&format!("DROP INDEX IF EXISTS chunks_hnsw_{}", c.id)).execute(self.store.pool()).await?;
        }
        *guard = None;
        VectorIndex::remove_files(&self.index_path(&c.id));
        self.indexes.lock().map_err(|e| RetrievalError::Index(e.to_string()))?.remove(&c.id);
        Ok(())
    }

    /// The lock and loaded index of a collection.
    pub(crate) fn slot(&self, id: &str) -> Arc<tokio::sync::RwLock<Option<Loaded>>> {
        let mut map = self.indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(id.to_string()).or_default().clone()
    }

    /// Upserts documents: each is chunked and embedded, then all are written in one
    /// transaction. A given version not above the stored one is a Conflict (nothing is written).
    pub async fn upsert(&self, tenant: &str, name: &str, docs: Vec<DocumentInput>) -> Result<Vec<Upserted>, RetrievalError> {
        let c = self.get(tenant, name).await?;
        let svc = self.embedders.get(&c.model).ok_or_else(|| RetrievalError::Invalid(format!("the embedding model {:?} is not served", c.model)))?;
        check_documents(docs.iter())?;
        // Chunk and embed outside the write lock (the slow part), every chunk of every
        // document in one call: the service packs them into as few forwards as it can.
        let mut chunked = Vec::with_capacity(docs.len());
        for d in docs {
            let chunks = crate::chunk::chunk(svc.model(), &d.text, c.chunk_size, c.chunk_overlap)?;
            chunked.push((d, chunks));
        }
        let ids: Vec<Vec<u32>> = chunked.iter().flat_map(|(_, ch)| ch.iter().map(|c| c.ids.clone())).collect();
        let mut vectors = svc.embed_ids(ids, false).await?.vectors.into_iter();
        let prepared = chunked
            .into_iter()
            .map(|(doc, chunks)| {
                let v = vectors.by_ref().take(chunks.len()).collect();
                Prepared { doc, chunks, vectors: v }
            })
            .collect();
        self.write(&c, prepared).await
    }

    /// Upserts documents whose chunks are already embedded (vectors from elsewhere, of the
    /// collection's dimension), as `upsert` does otherwise.
    pub async fn upsert_embedded(&self, tenant: &str, name: &str, docs: Vec<Prepared>) -> Result<Vec<Upserted>, RetrievalError> {
        let c = self.get(tenant, name).await?;
        check_documents(docs.iter().map(|p| &p.doc))?;
        for p in &docs {
            if p.chunks.is_empty() || p.chunks.len() != p.vectors.len() || p.vectors.iter().any(|v| v.len() != c.dim) {
                return Err(RetrievalError::Invalid(format!("document {:?}: one {}-dimensional vector per chunk", p.doc.id, c.dim)));
            }
        }
        self.write(&c, docs).await
    }

    async fn write(&self, c: &Collection, prepared: Vec<Prepared>) -> Result<Vec<Upserted>, RetrievalError> {
        let slot = self.slot(&c.id);
        let mut loaded = slot.write().await;
        let now = sluice_store::now_ms();
        let mut tx = self.store.pool().begin().await?;
        // The generation bump comes first: it takes the collection's write lock in the database.
        let generation: i64 = sqlx::query_scalar("UPDATE collections SET generation = generation + 1 WHERE id = $1 RETURNING generation")
            .bind(&c.id)
            .fetch_one(&mut *tx)
            .await?;
        let total: i64 = prepared.iter().map(|p| p.chunks.len() as i64).sum();
        let next: i64 = sqlx::query_scalar("UPDATE retrieval_seq SET next = next + $1 WHERE id = 1 RETURNING next").bind(total).fetch_one(&mut *tx).await?;
        let mut chunk_id = next - total;
        let (mut removed, mut added, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for Prepared { doc: d, chunks, vectors } in &prepared {
            let stored: Option<i64> = sqlx::query_scalar("SELECT version FROM documents WHERE collection_id = $1 AND doc_id = $2")
                .bind(&c.id)
                .bind(&d.id)
                .fetch_optional(&mut *tx)
                .await?;
            let version = match (d.version, stored) {
                (Some(v), Some(s)) if v <= s => {
                    return Err(RetrievalError::Conflict(format!("document {:?} is at version {s}; version {v} is not newer", d.id)));
                }
                (Some(v), _) => v,
                (None, s) => s.unwrap_or(0) + 1,
            };
            removed.extend(self.remove_chunks(&mut tx, &c.id, &d.id).await?);
            for (ch, v) in chunks.iter().zip(vectors) {
                let emb = if self.is_postgres() { "$9::vector" } else { "$9" };
                let sql = format!(
                    "INSERT INTO chunks (chunk_id, collection_id, doc_id, version, idx, start_char, end_char, text, embedding) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {emb})"
                );
                let q = sqlx::query(&sql)
                .bind(chunk_id)
                .bind(&c.id)
                .bind(&d.id)
                .bind(version)
                .bind(ch.index as i64)
                .bind(ch.start_char as i64)
                .bind(ch.end_char as i64)
                .bind(&ch.text);
                let q = if self.is_postgres() { q.bind(to_pgvector(v)) } else { q.bind(to_blob(v)) };
                q.execute(&mut *tx).await?;
                if !self.is_postgres() {
                    sqlx::query("INSERT INTO chunks_fts (rowid, text, collection_id) VALUES ($1, $2, $3)")
                        .bind(chunk_id)
                        .bind(&ch.text)
                        .bind(&c.id)
                        .execute(&mut *tx)
                        .await?;
                }
                added.push((chunk_id as u64, v.as_slice()));
                chunk_id += 1;
            }
            let updated = d.updated_ms.unwrap_or(now);
            let expires = d.ttl_ms.map(|t| updated.saturating_add(t));
            sqlx::query("DELETE FROM documents WHERE collection_id = $1 AND doc_id = $2").bind(&c.id).bind(&d.id).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO documents (collection_id, doc_id, version, metadata, updated_ms, expires_ms, chars, chunks) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&c.id)
            .bind(&d.id)
            .bind(version)
            .bind(Json::Object(d.metadata.clone()).to_string())
            .bind(updated)
            .bind(expires)
            .bind(d.text.chars().count() as i64)
            .bind(chunks.len() as i64)
            .execute(&mut *tx)
            .await?;
            out.push(Upserted { id: d.id.clone(), version, chunks: chunks.len(), tokens: chunks.iter().map(|c| c.ids.len()).sum() });
        }
        tx.commit().await?;
        if !self.is_postgres() {
            self.apply_to_index(c, &mut loaded, generation, &removed, &added).await?;
        }
        Ok(out)
    }

    /// Deletes one document (its chunks leave the index before this returns).
    pub async fn delete_document(&self, tenant: &str, name: &str, doc_id: &str) -> Result<(), RetrievalError> {
        let c = self.get(tenant, name).await?;
        let slot = self.slot(&c.id);
        let mut loaded = slot.write().await;
        let mut tx = self.store.pool().begin().await?;
        let generation: i64 = sqlx::query_scalar("UPDATE collections SET generation = generation + 1 WHERE id = $1 RETURNING generation")
            .bind(&c.id)
            .fetch_one(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM documents WHERE collection_id = $1 AND doc_id = $2").bind(&c.id).bind(doc_id).execute(&mut *tx).await?;
        if gone.rows_affected() == 0 {
            return Err(RetrievalError::NotFound(format!("no document {doc_id:?} in collection {name:?}")));
        }
        let removed = self.remove_chunks(&mut tx, &c.id, doc_id).await?;
        tx.commit().await?;
        if !self.is_postgres() {
            self.apply_to_index(&c, &mut loaded, generation, &removed, &[]).await?;
        }
        Ok(())
    }

    /// Deletes a document's chunks (and their lexical rows on SQLite) in `tx`; their ids, for
    /// the vector index.
    async fn remove_chunks(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, collection_id: &str, doc_id: &str) -> Result<Vec<u64>, RetrievalError> {
        let conn: &mut sqlx::AnyConnection = tx;
        let old: Vec<i64> = sqlx::Executor::fetch_all(
            &mut *conn,
            sqlx::query("SELECT chunk_id FROM chunks WHERE collection_id = $1 AND doc_id = $2").bind(collection_id).bind(doc_id),
        )
        .await?
        .into_iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
        sqlx::Executor::execute(&mut *conn, sqlx::query("DELETE FROM chunks WHERE collection_id = $1 AND doc_id = $2").bind(collection_id).bind(doc_id)).await?;
        if !self.is_postgres() && !old.is_empty() {
            let mut p = Params::default();
            let list = p.list(old.iter().map(|i| Value::Int(*i)));
            let sql = format!("DELETE FROM chunks_fts WHERE rowid IN ({list})");
            sqlx::Executor::execute(&mut *conn, p.bind(&sql)).await?;
        }
        Ok(old.into_iter().map(|i| i as u64).collect())
    }

    /// Brings the embedded index to `generation` after a committed write: by applying the
    /// write when the index was at the generation before it, else by reloading it whole.
    async fn apply_to_index(&self, c: &Collection, loaded: &mut Option<Loaded>, generation: i64, removed: &[u64], added: &[(u64, &[f32])]) -> Result<(), RetrievalError> {
        match loaded {
            Some(l) if l.generation == generation - 1 => {
                l.vectors.remove(removed)?;
                l.vectors.add(added)?;
                l.generation = generation;
            }
            _ => *loaded = Some(self.rebuild(c, generation).await?),
        }
        Ok(())
    }

    /// The embedded index of `c`, current, shared with other readers.
    pub(crate) async fn read_index(&self, c: &Collection) -> Result<tokio::sync::OwnedRwLockReadGuard<Option<Loaded>>, RetrievalError> {
        let slot = self.slot(&c.id);
        let generation: i64 = sqlx::query_scalar("SELECT generation FROM collections WHERE id = $1").bind(&c.id).fetch_one(self.store.pool()).await?;
        let guard = slot.clone().read_owned().await;
        if guard.as_ref().is_some_and(|l| l.generation == generation) {
            return Ok(guard);
        }
        drop(guard);
        let mut w = slot.clone().write_owned().await;
        self.ensure_index(c, &mut w).await?;
        Ok(w.downgrade())
    }

    /// The embedded index of `c` at its current generation: as loaded, from its file, or
    /// rebuilt from the stored chunks.
    pub(crate) async fn ensure_index(&self, c: &Collection, loaded: &mut Option<Loaded>) -> Result<(), RetrievalError> {
        // Read again under the write lock: a writer may have moved the index on meanwhile.
        let generation: i64 = sqlx::query_scalar("SELECT generation FROM collections WHERE id = $1").bind(&c.id).fetch_one(self.store.pool()).await?;
        if loaded.as_ref().is_some_and(|l| l.generation == generation) {
            return Ok(());
        }
        if let Some(vectors) = VectorIndex::load(&self.index_path(&c.id), c.dim, generation) {
            *loaded = Some(Loaded { vectors, generation });
            return Ok(());
        }
        *loaded = Some(self.rebuild(c, generation).await?);
        Ok(())
    }

    async fn rebuild(&self, c: &Collection, generation: i64) -> Result<Loaded, RetrievalError> {
        let started = std::time::Instant::now();
        let vectors = VectorIndex::new(c.dim)?;
        let mut after = 0i64;
        loop {
            let rows = sqlx::query("SELECT chunk_id, embedding FROM chunks WHERE collection_id = $1 AND chunk_id > $2 ORDER BY chunk_id LIMIT 4096")
                .bind(&c.id)
                .bind(after)
                .fetch_all(self.store.pool())
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("chunk_id")?;
            let mut batch: Vec<(u64, Vec<f32>)> = Vec::with_capacity(rows.len());
            for r in &rows {
                let blob: Vec<u8> = r.try_get("embedding")?;
                let v: Vec<f32> = blob.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                batch.push((r.try_get::<i64, _>("chunk_id")? as u64, v));
            }
            let refs: Vec<(u64, &[f32])> = batch.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            vectors.add(&refs)?;
        }
        tracing::info!(collection = %c.id, vectors = vectors.len(), ms = started.elapsed().as_millis() as u64, "vector index rebuilt from the store");
        Ok(Loaded { vectors, generation })
    }

    /// Saves every loaded embedded index whose file is behind (call periodically and at exit).
    pub async fn save_indexes(&self) -> Result<usize, RetrievalError> {
        let slots: Vec<(String, Arc<tokio::sync::RwLock<Option<Loaded>>>)> =
            self.indexes.lock().map_err(|e| RetrievalError::Index(e.to_string()))?.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut saved = 0;
        for (id, slot) in slots {
            let guard = slot.read().await;
            if let Some(l) = guard.as_ref() {
                let path = self.index_path(&id);
                let on_disk = std::fs::read_to_string(path.with_extension("generation")).ok().and_then(|s| s.trim().parse::<i64>().ok());
                if on_disk != Some(l.generation) {
                    l.vectors.save(&path, l.generation)?;
                    saved += 1;
                }
            }
        }
        Ok(saved)
    }

    /// Figures of a collection.
    pub async fn stats(&self, tenant: &str, name: &str) -> Result<Stats, RetrievalError> {
        let c = self.get(tenant, name).await?;
        let now = sluice_store::now_ms();
        let r = sqlx::query(
            "SELECT COUNT(*) AS documents, COALESCE(SUM(CASE WHEN expires_ms IS NOT NULL AND expires_ms <= $2 THEN 1 ELSE 0 END), 0) AS expired \
             FROM documents WHERE collection_id = $1",
        )
        .bind(&c.id)
        .bind(now)
        .fetch_one(self.store.pool())
        .await?;
        let chunks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chunks WHERE collection_id = $1").bind(&c.id).fetch_one(self.store.pool()).await?;
        let oldest = sqlx::query("SELECT doc_id, updated_ms FROM documents WHERE collection_id = $1 ORDER BY updated_ms, doc_id LIMIT 1")
            .bind(&c.id)
            .fetch_optional(self.store.pool())
            .await?
            .map(|r| -> Result<Oldest, sqlx::Error> {
                let updated_ms: i64 = r.try_get("updated_ms")?;
                Ok(Oldest { id: r.try_get("doc_id")?, updated_ms, age_seconds: (now - updated_ms) as f64 / 1e3 })
            })
            .transpose()?;
        let index_vectors = if self.is_postgres() {
            None
        } else {
            self.read_index(&c).await?.as_ref().map(|l| l.vectors.len())
        };
        Ok(Stats { documents: r.try_get("documents")?, chunks, expired: r.try_get("expired")?, oldest, index_vectors })
    }
}
