-- SPDX-License-Identifier: GPL-3.0-or-later
-- Drive one message through a milter with Debian's miltertest (OpenDKIM's Lua milter client).
-- Used by testkit::opendkim to exercise the real OpenDKIM daemon independently of our own milter
-- client. Parameters come from the environment (miltertest passes no script arguments):
--   MT_SOCKET  milter socket, e.g. "inet:12345@127.0.0.1"
--   MT_MESSAGE path of the message file (CRLF or LF line endings)
--   MT_CLIENT_IP / MT_CLIENT_HOST  what the MTA says about the SMTP client (default 127.0.0.1 / localhost)
--   MT_FROM / MT_RCPT  envelope addresses
--   MT_HEADERS colon-separated names of headers whose milter-side values are printed at the end
-- Output lines (tab separated): "REPLY <letter>", then "HEADER <name> <index> <value>" with folded
-- lines joined by "\n" in the value.
local socket = assert(os.getenv("MT_SOCKET"), "MT_SOCKET")
local file = assert(os.getenv("MT_MESSAGE"), "MT_MESSAGE")
local client_ip = os.getenv("MT_CLIENT_IP") or "127.0.0.1"
local client_host = os.getenv("MT_CLIENT_HOST") or "localhost"
local mail_from = os.getenv("MT_FROM") or "sender@example.com"
local rcpt_to = os.getenv("MT_RCPT") or "rcpt@example.net"
local want = os.getenv("MT_HEADERS") or "DKIM-Signature:Authentication-Results"

local conn = mt.connect(socket, 10, 0.2)
if conn == nil then error("cannot connect to " .. socket) end
mt.set_timeout(30)
mt.macro(conn, SMFIC_CONNECT, "j", "mx.test.invalid", "{daemon_name}", "testkit")
if mt.conninfo(conn, client_host, client_ip) ~= nil then error("conninfo failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("connect not continued") end
mt.macro(conn, SMFIC_MAIL, "i", "TESTQID")
if mt.mailfrom(conn, mail_from) ~= nil then error("mailfrom failed") end
if mt.rcptto(conn, rcpt_to) ~= nil then error("rcptto failed") end

local f = assert(io.open(file, "rb"))
local data = f:read("*a")
f:close()
data = data:gsub("\r\n", "\n")
local hdr, body = data:match("^(.-\n)\n(.*)$")
if hdr == nil then hdr, body = data, "" end
local name, value = nil, nil
for line in hdr:gmatch("(.-)\n") do
  if line:match("^[ \t]") and name then
    value = value .. "\r\n" .. line
  else
    if name then mt.header(conn, name, value) end
    name, value = line:match("^([^:]+):[ ]?(.*)$")
  end
end
if name then mt.header(conn, name, value) end
if mt.eoh(conn) ~= nil then error("eoh failed") end
body = body:gsub("\n", "\r\n")
local pos = 1
while pos <= #body do
  if mt.bodystring(conn, body:sub(pos, pos + 65534)) ~= nil then error("body failed") end
  pos = pos + 65535
end
if mt.eom(conn) ~= nil then error("eom failed") end
print("REPLY\t" .. string.char(mt.getreply(conn)))
for hname in want:gmatch("[^:]+") do
  local i = 0
  while true do
    local v = mt.getheader(conn, hname, i)
    if v == nil then break end
    v = v:gsub("\r?\n", "\\n")
    print("HEADER\t" .. hname .. "\t" .. i .. "\t" .. v)
    i = i + 1
  end
end
mt.disconnect(conn)
