-- Prefix of the scripts that change a record only while it is active
-- (scripts.rs prepends it): active(status) for queued and in_progress.
local function active(s) return s == 'queued' or s == 'in_progress' end
