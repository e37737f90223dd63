package reqlog

// capBatch bounds the deletions of one write when a workspace is cut to
// its cap: a cap lowered on a large log is applied in several writes.
const capBatch = 10_000
