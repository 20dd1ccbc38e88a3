-- SPDX-License-Identifier: GPL-3.0-or-later
-- RequiredHeaders (required_headers = true): a message without Date, and one without From, get
-- the configured answer (a 5xx reply code), like OpenDMARC; a complete message passes through.
local t = dofile(assert(os.getenv("MT_LIB"), "MT_LIB"))
local conn = t.connect("192.0.2.10", "MTREQ1")
local reply = t.send(conn, "a@example.com", {{"From", "a@example.com"}, {"Subject", "no date"}})
if reply ~= SMFIR_REPLYCODE then error("no Date: reply " .. string.char(reply)) end
mt.disconnect(conn)

conn = t.connect("192.0.2.10", "MTREQ2")
reply = t.send(conn, "a@example.com", {{"Date", "Wed, 25 Nov 2026 12:00:00 +0000"}, {"Subject", "no from"}})
if reply ~= SMFIR_REPLYCODE then error("no From: reply " .. string.char(reply)) end
mt.disconnect(conn)

conn = t.connect("192.0.2.10", "MTREQ3")
reply = t.send(conn, "a@example.com", {
  {"From", "a@example.com"}, {"Date", "Wed, 25 Nov 2026 12:00:00 +0000"}, {"Subject", "complete"},
})
if reply ~= SMFIR_ACCEPT and reply ~= SMFIR_CONTINUE then
  error("complete message: reply " .. string.char(reply))
end
t.equal(t.ar(conn), t.authserv .. "; spf=pass smtp.mailfrom=example.com; dmarc=pass (p=reject dis=none) header.from=example.com", "A-R")
mt.disconnect(conn)
print("OK required_headers")
