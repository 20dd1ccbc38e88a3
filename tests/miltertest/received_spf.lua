-- SPDX-License-Identifier: GPL-3.0-or-later
-- SPF self-validation off: the topmost Received-SPF for this envelope sender is the SPF result
-- (OpenDMARC's SPFSelfValidate=false). With MT_IGNORE=1 the daemon runs with spf_ignore_results
-- and the header must not count.
local t = dofile(assert(os.getenv("MT_LIB"), "MT_LIB"))
local ignore = os.getenv("MT_IGNORE") == "1"
local rspf = "pass (mx.test.example: domain of a@example.com designates 198.51.100.7 as permitted sender) " ..
  "client-ip=198.51.100.7; envelope-from=\"a@example.com\"; helo=client.example.net; receiver=mx.test.example; identity=mailfrom"
local conn = t.connect("198.51.100.7", "MTRSPF1")
local reply = t.send(conn, "a@example.com", {
  {"Received-SPF", rspf}, {"From", "a@example.com"}, {"Date", "Wed, 25 Nov 2026 12:00:00 +0000"},
})
if reply ~= SMFIR_ACCEPT and reply ~= SMFIR_CONTINUE then error("reply " .. string.char(reply)) end
local want = ignore and "fail" or "pass"
t.equal(t.ar(conn), t.authserv .. "; dmarc=" .. want .. " (p=reject dis=none) header.from=example.com", "A-R")
mt.disconnect(conn)
-- The same header for another envelope sender is no result for this one.
conn = t.connect("198.51.100.7", "MTRSPF2")
reply = t.send(conn, "other@example.com", {
  {"Received-SPF", rspf}, {"From", "a@example.com"}, {"Date", "Wed, 25 Nov 2026 12:00:00 +0000"},
})
t.equal(t.ar(conn), t.authserv .. "; dmarc=fail (p=reject dis=none) header.from=example.com", "other sender A-R")
mt.disconnect(conn)
print("OK received_spf")
