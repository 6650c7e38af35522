"""Long memory: chunks the device cache evicts live on in host memory and on disk, and a question
can recall them.

Data flow: `session.eviction_sink` → `StreamMemory.offload` (a key summary from `scorer` and the
KV into `TieredStore`: host, then `disk` files, within `DiskQuota`) → `StreamMemory.recall(spec)`
gives a `ChunkRecall` (`spec` parses what the client asked) that `StreamSession.ask` loads
(`rotation` re-rotates each chunk to the current offset) and cuts off again with the question.
`MemoryManager` owns a worker's per-stream memories, its folder and the service-wide disk cap.
"""
