-- SPDX-License-Identifier: GPL-3.0-or-later
-- Helpers for the miltertest scenarios in this directory (loaded with dofile from each script).
-- miltertest passes no arguments to a script: the socket comes from MT_SOCKET.
local M = {}

M.authserv = "mx.test.example"

-- A new connection to the milter; `ip` is an address or "unspec" (unknown protocol family).
function M.connect(ip, qid)
  local socket = assert(os.getenv("MT_SOCKET"), "MT_SOCKET")
  local conn = mt.connect(socket, 10, 0.2)
  if conn == nil then error("cannot connect to " .. socket) end
  mt.set_timeout(30)
  mt.macro(conn, SMFIC_CONNECT, "j", M.authserv)
  if mt.conninfo(conn, "client.example.net", ip) ~= nil then error("conninfo failed") end
  M.expect(conn, SMFIR_CONTINUE, "connect")
  if mt.helo(conn, "client.example.net") ~= nil then error("helo failed") end
  mt.macro(conn, SMFIC_MAIL, "i", qid)
  return conn
end

-- Fails the script unless the last reply is `want`.
function M.expect(conn, want, step)
  local got = mt.getreply(conn)
  if got ~= want then
    error(step .. ": reply " .. string.char(got) .. ", expected " .. string.char(want))
  end
end

-- Sends one message: envelope, header fields ({name, value} pairs in order), body.
-- Returns the end-of-message reply.
function M.send(conn, mail_from, headers, body)
  if mt.mailfrom(conn, mail_from) ~= nil then error("mailfrom failed") end
  if mt.rcptto(conn, "bob@example.org") ~= nil then error("rcptto failed") end
  for _, h in ipairs(headers) do
    if mt.header(conn, h[1], h[2]) ~= nil then error("header " .. h[1] .. " failed") end
  end
  if mt.eoh(conn) ~= nil then error("eoh failed") end
  if mt.bodystring(conn, body or "Hello.\r\n") ~= nil then error("body failed") end
  if mt.eom(conn) ~= nil then error("eom failed") end
  return mt.getreply(conn)
end

-- Our Authentication-Results header, with folding removed; fails if there is none.
function M.ar(conn)
  local v = mt.getheader(conn, "Authentication-Results", 0)
  if v == nil then error("no Authentication-Results added") end
  v = v:gsub("\r?\n[ \t]+", " "):gsub("^[ \t]+", "")
  print("A-R: " .. v)
  return v
end

-- Fails unless `text` equals `want`.
function M.equal(text, want, what)
  if text ~= want then
    error(what .. ":\n  got:  " .. tostring(text) .. "\n  want: " .. want)
  end
end

return M
