-- SPDX-License-Identifier: GPL-3.0-or-later
-- A connection from an unknown protocol family (SMFIA_UNKNOWN: Postfix's "unknown" client)
-- must work: no client address means no SPF check, DMARC is still evaluated, the message is
-- accepted with our header, and the connection can carry a second message.
local t = dofile(assert(os.getenv("MT_LIB"), "MT_LIB"))
local conn = t.connect("unspec", "MTUNSPEC1")
local reply = t.send(conn, "a@example.com", {
  {"From", "Alice <a@example.com>"}, {"Date", "Wed, 25 Nov 2026 12:00:00 +0000"},
  {"Subject", "unspec"}, {"Message-ID", "<mtunspec1@example.com>"},
})
if reply ~= SMFIR_ACCEPT and reply ~= SMFIR_CONTINUE then
  error("unexpected reply " .. string.char(reply))
end
t.equal(t.ar(conn), t.authserv .. "; dmarc=fail (p=reject dis=none) header.from=example.com", "A-R")
mt.macro(conn, SMFIC_MAIL, "i", "MTUNSPEC2")
reply = t.send(conn, "b@example.com", {
  {"From", "Bob <b@example.com>"}, {"Date", "Wed, 25 Nov 2026 12:00:00 +0000"},
  {"Subject", "unspec again"},
})
if reply ~= SMFIR_ACCEPT and reply ~= SMFIR_CONTINUE then
  error("second message: unexpected reply " .. string.char(reply))
end
t.equal(t.ar(conn), t.authserv .. "; dmarc=fail (p=reject dis=none) header.from=example.com", "second A-R")
mt.disconnect(conn)
print("OK unspec_family")
