//! Queries: vector (the embedded HNSW index, or pgvector's), lexical (FTS5's BM25, or
//! PostgreSQL full-text ranking) and hybrid (both, fused by reciprocal rank). Every candidate
//! is checked against the store before it is returned: its document's current version, not
//! expired, not older than `max_age`, matching the metadata filter. When filters leave fewer
//! than `k`, the search widens (up to the whole collection) rather than return short.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use sqlx::Row;

use crate::collections::{Collection, Collections, to_pgvector};
use crate::error::RetrievalError;
use crate::index::EXPANSION_SEARCH;
use crate::sql::{Params, Value};

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Nearest embeddings.
    Vector,
    /// Words (BM25).
    Lexical,
    /// Both, fused by reciprocal rank.
    #[default]
    Hybrid,
}

impl Mode {
    /// From its API name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vector" => Some(Self::Vector),
            "lexical" => Some(Self::Lexical),
            "hybrid" => Some(Self::Hybrid),
            _ => None,
        }
    }
}

/// A query.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Text to search for.
    pub text: String,
    /// Results wanted.
    pub k: usize,
    /// Mode.
    pub mode: Mode,
    /// Metadata equality filters (`{"lang": "en"}`); scalar values only.
    pub filter: Map<String, Json>,
    /// Only documents updated within this many milliseconds.
    pub max_age_ms: Option<i64>,
    /// A query vector to use instead of embedding `text` (which lexical search still uses).
    pub vector: Option<Vec<f32>>,
}

/// One result: a chunk of a document's current version.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    /// Document id.
    pub document_id: String,
    /// Its version.
    pub version: i64,
    /// Chunk position in the document.
    pub chunk_index: i64,
    /// First character of the chunk in the document.
    pub start_char: i64,
    /// End character (exclusive).
    pub end_char: i64,
    /// The chunk's text.
    pub text: String,
    /// Score: cosine similarity (vector), BM25 (lexical, higher is better), fused rank score (hybrid).
    pub score: f64,
    /// Seconds since the document's `updated_at`.
    pub age_seconds: f64,
    /// The document's metadata.
    pub metadata: Json,
}

/// Reciprocal rank fusion constant (the usual 60).
const RRF_K: f64 = 60.0;
/// Most results a query may ask for.
pub const MAX_K: usize = 1000;

/// A chunk count above which a query word is common: it is left out of the lexical query when
/// rarer words remain (its BM25 weight is small, and ranking its long posting list is what
/// makes lexical search slow on large collections).
const COMMON_WORD_CHUNKS: i64 = 1000;

/// The words of a query, lowercased, each once, in order.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let w = w.to_lowercase();
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// Words as an FTS5 expression: each quoted, any may match.
fn fts5_query(words: &[String]) -> Option<String> {
    (!words.is_empty()).then(|| words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" OR "))
}

/// Words as a PostgreSQL tsquery: any may match.
fn tsquery(words: &[String]) -> Option<String> {
    (!words.is_empty()).then(|| words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" | "))
}

impl Collections {
    /// Runs `q` on the tenant's collection `name`.
    pub async fn query(&self, tenant: &str, name: &str, q: &Query) -> Result<Vec<Hit>, RetrievalError> {
        if q.k == 0 || q.k > MAX_K {
            return Err(RetrievalError::Invalid(format!("k must be between 1 and {MAX_K}")));
        }
        if q.text.trim().is_empty() {
            return Err(RetrievalError::Invalid("the query text is empty".into()));
        }
        for (key, v) in &q.filter {
            if key.is_empty() || key.contains('"') || !(v.is_string() || v.is_number() || v.is_boolean()) {
                return Err(RetrievalError::Invalid(format!("filter {key:?}: keys are plain names and values strings, numbers or booleans")));
            }
        }
        let c = self.get(tenant, name).await?;
        let now = sluice_store::now_ms();
        let vector = matches!(q.mode, Mode::Vector | Mode::Hybrid);
        let lexical = matches!(q.mode, Mode::Lexical | Mode::Hybrid);
        // Hybrid fuses deeper lists than it returns.
        let depth = if q.mode == Mode::Hybrid { (q.k * 2).max(20) } else { q.k };
        if let Some(v) = q.vector.as_ref().filter(|v| v.len() != c.dim) {
            return Err(RetrievalError::Invalid(format!("a {}-dimensional query vector for a {}-dimensional collection", v.len(), c.dim)));
        }
        let embedding = if let (true, Some(v)) = (vector, &q.vector) {
            Some(v.clone())
        } else if vector {
            let svc = self.embedders.get(&c.model).ok_or_else(|| RetrievalError::Invalid(format!("the embedding model {:?} is not served", c.model)))?;
            Some(svc.embed_texts(std::slice::from_ref(&q.text), true).await?.vectors.remove(0))
        } else {
            None
        };
        // The two searches run side by side: a hybrid query takes as long as the slower one.
        let vector_search = async {
            match &embedding {
                Some(e) if self.is_postgres() => self.vector_pg(&c, e, q, depth, now).await,
                Some(e) => self.vector_embedded(&c, e, q, depth, now).await,
                None => Ok(Vec::new()),
            }
        };
        let lexical_search = async { if lexical { self.lexical(&c, q, depth, now).await } else { Ok(Vec::new()) } };
        let (by_vector, by_words) = tokio::join!(vector_search, lexical_search);
        let (by_vector, by_words) = (by_vector?, by_words?);
        let mut hits = match q.mode {
            Mode::Vector => by_vector,
            Mode::Lexical => by_words,
            Mode::Hybrid => fuse(by_vector, by_words),
        };
        hits.truncate(q.k);
        Ok(hits)
    }

    /// The freshness and metadata conditions on `d` (documents) joined to `c` (chunks).
    fn live_conditions(&self, p: &mut Params, q: &Query, now: i64) -> String {
        let mut sql = format!(" AND (d.expires_ms IS NULL OR d.expires_ms > {})", p.push(Value::Int(now)));
        if let Some(age) = q.max_age_ms {
            sql += &format!(" AND d.updated_ms >= {}", p.push(Value::Int(now - age)));
        }
        if q.filter.is_empty() {
            return sql;
        }
        if self.is_postgres() {
            sql += &format!(" AND d.metadata::jsonb @> {}::jsonb", p.push(Value::Text(Json::Object(q.filter.clone()).to_string())));
            return sql;
        }
        for (key, v) in &q.filter {
            let path = p.push(Value::Text(format!("$.\"{key}\"")));
            let value = match v {
                Json::Bool(b) => Value::Int(i64::from(*b)),
                Json::Number(n) => n.as_i64().map_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN)), Value::Int),
                other => Value::Text(other.as_str().unwrap_or_default().to_string()),
            };
            sql += &format!(" AND json_extract(d.metadata, {path}) = {}", p.push(value));
        }
        sql
    }

    /// Rows of the given chunks that pass the conditions, keyed by chunk id (SQLite: the
    /// unary `+` keeps the planner on the chunk-id lookups instead of scanning the collection).
    async fn live_rows(&self, c: &Collection, ids: &[i64], q: &Query, now: i64) -> Result<HashMap<i64, Hit>, RetrievalError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut p = Params::default();
        let coll = p.push(Value::Text(c.id.clone()));
        let list = p.list(ids.iter().map(|i| Value::Int(*i)));
        let cond = self.live_conditions(&mut p, q, now);
        let sql = format!(
            "SELECT c.chunk_id, c.doc_id, c.version, c.idx, c.start_char, c.end_char, c.text, d.metadata, d.updated_ms \
             FROM chunks c JOIN documents d ON d.collection_id = c.collection_id AND d.doc_id = c.doc_id AND d.version = c.version \
             WHERE c.chunk_id IN ({list}) AND +c.collection_id = {coll}{cond}"
        );
        let rows = p.bind(&sql).fetch_all(self.store.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get::<i64, _>("chunk_id")?, hit(r, 0.0, now)?))).collect()
    }

    async fn vector_embedded(&self, c: &Collection, e: &[f32], q: &Query, k: usize, now: i64) -> Result<Vec<Hit>, RetrievalError> {
        let loaded = self.read_index(c).await?;
        let Some(l) = loaded.as_ref() else { return Ok(Vec::new()) };
        let total = l.vectors.len();
        let mut n = (k * 4).max(40).min(total.max(1));
        loop {
            let found = l.vectors.search(e, n, EXPANSION_SEARCH.max(n))?;
            let ids: Vec<i64> = found.iter().map(|(key, _)| *key as i64).collect();
            let mut rows = self.live_rows(c, &ids, q, now).await?;
            let mut hits: Vec<Hit> = found
                .iter()
                .filter_map(|(key, dist)| rows.remove(&(*key as i64)).map(|h| Hit { score: 1.0 - f64::from(*dist), ..h }))
                .collect();
            if hits.len() >= k || n >= total {
                hits.truncate(k);
                return Ok(hits);
            }
            n = (n * 4).min(total);
        }
    }

    async fn vector_pg(&self, c: &Collection, e: &[f32], q: &Query, k: usize, now: i64) -> Result<Vec<Hit>, RetrievalError> {
        let mut p = Params::default();
        let v = p.push(Value::Text(to_pgvector(e)));
        let cond = self.live_conditions(&mut p, q, now);
        let lim = p.push(Value::Int(k as i64));
        // The collection id is ours (col_ + hex) and written literally so that the planner can
        // use the collection's partial HNSW index.
        let sql = format!(
            "SELECT c.chunk_id, c.doc_id, c.version, c.idx, c.start_char, c.end_char, c.text, d.metadata, d.updated_ms, \
             (c.embedding::vector({dim}) <=> {v}::vector({dim})) AS dist \
             FROM chunks c JOIN documents d ON d.collection_id = c.collection_id AND d.doc_id = c.doc_id AND d.version = c.version \
             WHERE c.collection_id = '{id}'{cond} ORDER BY c.embedding::vector({dim}) <=> {v}::vector({dim}) LIMIT {lim}",
            dim = c.dim,
            id = c.id
        );
        let mut conn = self.store.pool().acquire().await?;
        // Session settings of this pooled connection (they only steer HNSW scans): the search
        // breadth for this k, and pgvector 0.8's iterative scan, which keeps walking the graph
        // until enough rows pass the filters.
        let set = format!("SET hnsw.ef_search = {}; SET hnsw.iterative_scan = strict_order", EXPANSION_SEARCH.max(k * 2).min(1000));
        let conn: &mut sqlx::AnyConnection = &mut conn;
        sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&set)).await?;
        let rows = sqlx::Executor::fetch_all(&mut *conn, p.bind(&sql)).await?;
        rows.iter().map(|r| hit(r, 1.0 - r.try_get::<f64, _>("dist")?, now)).collect()
    }

    /// The query's words without the common ones (see `COMMON_WORD_CHUNKS`), unless all are.
    async fn discriminative_words(&self, c: &Collection, text: &str) -> Result<Vec<String>, RetrievalError> {
        let all = words(text);
        if self.is_postgres() {
            // PostgreSQL's own statistics name the common lexemes: no counting per query.
            if let Some(common) = self.pg_common_words().await? {
                let rare: Vec<String> = all.iter().filter(|w| !common.contains(*w)).cloned().collect();
                return Ok(if rare.is_empty() { all } else { rare });
            }
        }
        let mut rare = Vec::new();
        for w in &all {
            // Counting stops at the threshold: bounded work however common the word is.
            let n: i64 = if self.is_postgres() {
                sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT 1 FROM chunks WHERE collection_id = $1 AND tsv @@ to_tsquery('simple', $2) LIMIT $3) s")
                    .bind(&c.id)
                    .bind(format!("'{w}'"))
                    .bind(COMMON_WORD_CHUNKS + 1)
                    .fetch_one(self.store.pool())
                    .await?
            } else {
                sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT 1 FROM chunks_fts WHERE chunks_fts MATCH $1 AND collection_id = $2 LIMIT $3)")
                    .bind(format!("\"{w}\""))
                    .bind(&c.id)
                    .bind(COMMON_WORD_CHUNKS + 1)
                    .fetch_one(self.store.pool())
                    .await?
            };
            if n <= COMMON_WORD_CHUNKS {
                rare.push(w.clone());
            }
        }
        Ok(if rare.is_empty() { all } else { rare })
    }

    /// Lexemes in more than `COMMON_WORD_CHUNKS` chunks by the planner's statistics of
    /// `chunks.tsv` (most_common_elems, kept by ANALYZE), cached for a minute; None before the
    /// table has been analysed.
    async fn pg_common_words(&self) -> Result<Option<Arc<HashSet<String>>>, RetrievalError> {
        if let Some((at, words)) = self.common_words.lock().map_err(|e| RetrievalError::Index(e.to_string()))?.as_ref()
            && at.elapsed() < std::time::Duration::from_secs(60)
        {
            return Ok(words.clone());
        }
        let row = sqlx::query(
            "SELECT s.most_common_elems::text AS elems, s.most_common_elem_freqs::text AS freqs, c.reltuples::float8 AS rows \
             FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename \
             WHERE s.tablename = 'chunks' AND s.attname = 'tsv' AND s.schemaname = current_schema()",
        )
        .fetch_optional(self.store.pool())
        .await?;
        let words = match row {
            Some(r) => {
                let elems: Option<String> = r.try_get("elems")?;
                let freqs: Option<String> = r.try_get("freqs")?;
                let rows: f64 = r.try_get("rows")?;
                match (elems, freqs) {
                    (Some(e), Some(f)) if rows > 0.0 => {
                        let list = |s: &str| s.trim_matches(|c| c == '{' || c == '}').split(',').map(|x| x.trim_matches('"').to_string()).collect::<Vec<_>>();
                        let freqs: Vec<f64> = list(&f).iter().filter_map(|x| x.parse().ok()).collect();
                        let common = list(&e)
                            .into_iter()
                            .zip(freqs)
                            .filter(|(_, f)| f * rows > COMMON_WORD_CHUNKS as f64)
                            .map(|(w, _)| w)
                            .collect();
                        Some(Arc::new(common))
                    }
                    _ => None,
                }
            }
            None => None,
        };
        *self.common_words.lock().map_err(|e| RetrievalError::Index(e.to_string()))? = Some((std::time::Instant::now(), words.clone()));
        Ok(words)
    }

    async fn lexical(&self, c: &Collection, q: &Query, k: usize, now: i64) -> Result<Vec<Hit>, RetrievalError> {
        let words = self.discriminative_words(c, &q.text).await?;
        if self.is_postgres() {
            let Some(tq) = tsquery(&words) else { return Ok(Vec::new()) };
            let mut p = Params::default();
            let tq = p.push(Value::Text(tq));
            let coll = p.push(Value::Text(c.id.clone()));
            let cond = self.live_conditions(&mut p, q, now);
            let lim = p.push(Value::Int(k as i64));
            let sql = format!(
                "SELECT c.chunk_id, c.doc_id, c.version, c.idx, c.start_char, c.end_char, c.text, d.metadata, d.updated_ms, \
                 ts_rank_cd(c.tsv, to_tsquery('simple', {tq}))::float8 AS s \
                 FROM chunks c JOIN documents d ON d.collection_id = c.collection_id AND d.doc_id = c.doc_id AND d.version = c.version \
                 WHERE c.collection_id = {coll} AND c.tsv @@ to_tsquery('simple', {tq}){cond} ORDER BY s DESC, c.chunk_id LIMIT {lim}"
            );
            let rows = p.bind(&sql).fetch_all(self.store.pool()).await?;
            return rows.iter().map(|r| hit(r, r.try_get::<f64, _>("s")?, now)).collect();
        }
        let Some(m) = fts5_query(&words) else { return Ok(Vec::new()) };
        let mut n = (k * 4).max(40);
        loop {
            let rows = sqlx::query("SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH $1 AND collection_id = $2 ORDER BY s LIMIT $3")
                .bind(&m)
                .bind(&c.id)
                .bind(n as i64)
                .fetch_all(self.store.pool())
                .await?;
            let found: Vec<(i64, f64)> = rows.iter().map(|r| Ok((r.try_get("rowid")?, r.try_get("s")?))).collect::<Result<_, sqlx::Error>>()?;
            let ids: Vec<i64> = found.iter().map(|f| f.0).collect();
            let mut live = self.live_rows(c, &ids, q, now).await?;
            // FTS5's bm25() is negative, lower is better: report it the other way round.
            let mut hits: Vec<Hit> = found.iter().filter_map(|(id, s)| live.remove(id).map(|h| Hit { score: -s, ..h })).collect();
            if hits.len() >= k || found.len() < n {
                hits.truncate(k);
                return Ok(hits);
            }
            n *= 4;
        }
    }
}

fn hit(r: &sqlx::any::AnyRow, score: f64, now: i64) -> Result<Hit, RetrievalError> {
    let metadata: String = r.try_get("metadata")?;
    let updated: i64 = r.try_get("updated_ms")?;
    Ok(Hit {
        document_id: r.try_get("doc_id")?,
        version: r.try_get("version")?,
        chunk_index: r.try_get("idx")?,
        start_char: r.try_get("start_char")?,
        end_char: r.try_get("end_char")?,
        text: r.try_get("text")?,
        score,
        age_seconds: (now - updated) as f64 / 1e3,
        metadata: serde_json::from_str(&metadata).unwrap_or(Json::Null),
    })
}

/// Reciprocal rank fusion: each list contributes 1 / (60 + rank) per chunk.
fn fuse(a: Vec<Hit>, b: Vec<Hit>) -> Vec<Hit> {
    let mut scores: HashMap<(String, i64), (f64, Hit)> = HashMap::new();
    for list in [a, b] {
        for (rank, h) in list.into_iter().enumerate() {
            let key = (h.document_id.clone(), h.chunk_index);
            let add = 1.0 / (RRF_K + rank as f64 + 1.0);
            scores.entry(key).and_modify(|e| e.0 += add).or_insert((add, h));
        }
    }
    let mut out: Vec<Hit> = scores.into_values().map(|(s, h)| Hit { score: s, ..h }).collect();
    out.sort_by(|x, y| y.score.total_cmp(&x.score).then_with(|| x.document_id.cmp(&y.document_id)).then(x.chunk_index.cmp(&y.chunk_index)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if a query's future may move between threads (axum handlers need it).
    #[allow(dead_code)]
    fn query_futures_are_send(c: &'static Collections, q: &'static Query) {
        fn is_send<T: Send>(_: T) {}
        is_send(c.query("t", "n", q));
    }

    #[test]
    fn query_words_are_quoted_and_any_may_match() {
        assert_eq!(fts5_query(&words("Hello, \"world\" OR-not hello")).as_deref(), Some("\"hello\" OR \"world\" OR \"or\" OR \"not\""));
        assert_eq!(fts5_query(&words(" ,; ")), None);
        assert_eq!(tsquery(&words("it's fine")).as_deref(), Some("'it' | 's' | 'fine'"));
    }

    #[test]
    fn fusion_rewards_agreement() {
        let h = |d: &str| Hit {
            document_id: d.into(),
            version: 1,
            chunk_index: 0,
            start_char: 0,
            end_char: 1,
            text: String::new(),
            score: 0.0,
            age_seconds: 0.0,
            metadata: Json::Null,
        };
        let fused = fuse(vec![h("a"), h("b"), h("c")], vec![h("c"), h("b"), h("d")]);
        let order: Vec<&str> = fused.iter().map(|h| h.document_id.as_str()).collect();
        // c: 1/63 + 1/61 edges out b: 2/62; both beat a (one list) and d (one list, lower).
        assert_eq!(order, ["c", "b", "a", "d"]);
    }
}
