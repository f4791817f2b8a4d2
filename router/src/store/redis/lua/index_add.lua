-- Add a response to its tenant's index (Redis Cluster: after lua/insert.lua
-- stored the record, so an indexed id always had a record).
-- KEYS: index. ARGV: id, score, cutoff, ttl_ms.
index_add(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
