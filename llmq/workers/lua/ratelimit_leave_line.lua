-- After ratelimit_line. KEYS: line, due, want, owner. ARGV: 1 job id, 2 tenant key prefix
-- → 1 when the job was in the line, else 0.

if line_remove(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[1]) then return 1 end
return 0
