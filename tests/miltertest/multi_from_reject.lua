-- SPDX-License-Identifier: GPL-3.0-or-later
-- RejectMultiValueFrom (reject_multi_value_from = true): a From with addresses in two domains is
-- rejected, whether in one field or in two From fields.
local t = dofile(assert(os.getenv("MT_LIB"), "MT_LIB"))
local conn = t.connect("192.0.2.10", "MTMULTI1")
local reply = t.send(conn, "a@example.com", {
  {"From", "a@example.com, b@evil.example"}, {"Date", "Wed, 25 Nov 2026 12:00:00 +0000"},
})
if reply ~= SMFIR_REPLYCODE then error("one field: reply " .. string.char(reply)) end
mt.disconnect(conn)
conn = t.connect("192.0.2.10", "MTMULTI2")
reply = t.send(conn, "a@example.com", {
  {"From", "a@example.com"}, {"From", "b@evil.example"}, {"Date", "Wed, 25 Nov 2026 12:00:00 +0000"},
})
if reply ~= SMFIR_REPLYCODE then error("two fields: reply " .. string.char(reply)) end
mt.disconnect(conn)
print("OK multi_from_reject")
