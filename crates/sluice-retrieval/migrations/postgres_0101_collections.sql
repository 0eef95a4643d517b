-- Retrieval on PostgreSQL: the same tables as on SQLite, with embeddings in pgvector columns
-- (an HNSW index per collection, made when the collection is created) and a generated tsvector
-- with a GIN index for lexical search.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE collections (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    name           TEXT NOT NULL,
    model          TEXT NOT NULL,
    dim            BIGINT NOT NULL,
    chunk_size     BIGINT NOT NULL,
    chunk_overlap  BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    generation     BIGINT NOT NULL,
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
    chunk_id       BIGINT PRIMARY KEY,
    collection_id  TEXT NOT NULL,
    doc_id         TEXT NOT NULL,
    version        BIGINT NOT NULL,
    idx            BIGINT NOT NULL,
    start_char     BIGINT NOT NULL,
    end_char       BIGINT NOT NULL,
    text           TEXT NOT NULL,
    embedding      vector NOT NULL,
    tsv            tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX chunks_doc ON chunks (collection_id, doc_id);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);

CREATE TABLE retrieval_seq (id BIGINT PRIMARY KEY, next BIGINT NOT NULL);
INSERT INTO retrieval_seq (id, next) VALUES (1, 1);
