"""Long memory: chunks the device cache evicts live on in host memory and on disk, and a question
can recall them.

Data flow: `session.eviction_sink` → `StreamMemory.offload` (key summary into `KeyIndex`, KV into
`TieredStore`: host, then `disk` files, within `DiskQuota`) → `StreamMemory.recall(spec)` gives
a `Recall` that `StreamSession.ask` loads (`rotation` re-rotates each chunk to the current
offset) and cuts off again with the question. `MemoryManager` owns the per-stream memories of a
worker, their folder and the service-wide disk cap.
"""
