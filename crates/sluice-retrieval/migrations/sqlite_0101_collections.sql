-- Retrieval on SQLite: collections, their documents (one row per live document: its current
-- version), and chunks (text, offsets, embedding as little-endian f32) of current versions
-- only — a new version replaces its document's chunks in the same transaction. The vector
-- index lives beside the database (data/index/), rebuilt from `chunks` when missing or stale;
-- the lexical index is FTS5 (BM25).
CREATE TABLE collections (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    name           TEXT NOT NULL,
    model          TEXT NOT NULL,
    dim            BIGINT NOT NULL,
    chunk_size     BIGINT NOT NULL,
    chunk_overlap  BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    generation     BIGINT NOT NULL,     -- bumped by every write; the vector index records the one it holds
    UNIQUE (tenant_id, name)
);

CREATE TABLE documents (
    collection_id  TEXT NOT NULL,
    doc_id         TEXT NOT NULL,
    version        BIGINT NOT NULL,
    metadata       TEXT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    expires_ms     BIGINT,
    chars          BIGINT NOT NULL,
    chunks         BIGINT NOT NULL,
    PRIMARY KEY (collection_id, doc_id)
);
CREATE INDEX documents_updated ON documents (collection_id, updated_ms);
CREATE INDEX documents_expires ON documents (collection_id, expires_ms);

CREATE TABLE chunks (
    chunk_id       INTEGER PRIMARY KEY,
    collection_id  TEXT NOT NULL,
    doc_id         TEXT NOT NULL,
    version        BIGINT NOT NULL,
    idx            BIGINT NOT NULL,
    start_char     BIGINT NOT NULL,
    end_char       BIGINT NOT NULL,
    text           TEXT NOT NULL,
    embedding      BLOB NOT NULL
);
CREATE INDEX chunks_doc ON chunks (collection_id, doc_id);

CREATE VIRTUAL TABLE chunks_fts USING fts5(text, collection_id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2');

CREATE TABLE retrieval_seq (id BIGINT PRIMARY KEY, next BIGINT NOT NULL);
INSERT INTO retrieval_seq (id, next) VALUES (1, 1);
