// SPDX-License-Identifier: GPL-3.0-or-later
//! Protocol constants, named as in libmilter's `mfdef.h` so that they can be
//! matched against milter documentation and logs without translation.

/// The protocol version this client speaks (and offers in `SMFIC_OPTNEG`).
pub const SMFI_VERSION: u32 = 6;

/// Largest body chunk per `SMFIC_BODY` packet. libmilter's `MILTER_CHUNK_SIZE`;
/// Postfix fills chunks up to exactly this size, and so do we.
pub const MILTER_CHUNK_SIZE: usize = 65535;

// Commands, client (MTA) -> milter.
/// Abort the current message.
pub const SMFIC_ABORT: u8 = b'A';
/// A body chunk.
pub const SMFIC_BODY: u8 = b'B';
/// Connection information.
pub const SMFIC_CONNECT: u8 = b'C';
/// Macro definitions for the command named in the first data byte.
pub const SMFIC_MACRO: u8 = b'D';
/// End of body: the milter answers with modifications and a final reply.
pub const SMFIC_BODYEOB: u8 = b'E';
/// HELO/EHLO.
pub const SMFIC_HELO: u8 = b'H';
/// Quit, but keep the connection for a new session (a new `SMFIC_OPTNEG`).
pub const SMFIC_QUIT_NC: u8 = b'K';
/// One header field.
pub const SMFIC_HEADER: u8 = b'L';
/// MAIL FROM.
pub const SMFIC_MAIL: u8 = b'M';
/// End of headers.
pub const SMFIC_EOH: u8 = b'N';
/// Option negotiation.
pub const SMFIC_OPTNEG: u8 = b'O';
/// Quit: the milter closes the connection.
pub const SMFIC_QUIT: u8 = b'Q';
/// RCPT TO.
pub const SMFIC_RCPT: u8 = b'R';
/// DATA.
pub const SMFIC_DATA: u8 = b'T';
/// An unknown SMTP command.
pub const SMFIC_UNKNOWN: u8 = b'U';

// Replies, milter -> client.
/// Add recipient.
pub const SMFIR_ADDRCPT: u8 = b'+';
/// Delete recipient.
pub const SMFIR_DELRCPT: u8 = b'-';
/// Add recipient with ESMTP arguments.
pub const SMFIR_ADDRCPT_PAR: u8 = b'2';
/// Option negotiation reply.
pub const SMFIR_OPTNEG: u8 = b'O';
/// Accept.
pub const SMFIR_ACCEPT: u8 = b'a';
/// Replace body (chunk).
pub const SMFIR_REPLBODY: u8 = b'b';
/// Continue.
pub const SMFIR_CONTINUE: u8 = b'c';
/// Discard.
pub const SMFIR_DISCARD: u8 = b'd';
/// Change envelope sender.
pub const SMFIR_CHGFROM: u8 = b'e';
/// Add header.
pub const SMFIR_ADDHEADER: u8 = b'h';
/// Insert header.
pub const SMFIR_INSHEADER: u8 = b'i';
/// Change (or delete) header.
pub const SMFIR_CHGHEADER: u8 = b'm';
/// Progress: still working, keep waiting.
pub const SMFIR_PROGRESS: u8 = b'p';
/// Quarantine.
pub const SMFIR_QUARANTINE: u8 = b'q';
/// Reject.
pub const SMFIR_REJECT: u8 = b'r';
/// Skip further events of this kind.
pub const SMFIR_SKIP: u8 = b's';
/// Temporary failure.
pub const SMFIR_TEMPFAIL: u8 = b't';
/// Explicit SMTP reply ("550 5.7.1 text").
pub const SMFIR_REPLYCODE: u8 = b'y';

// Actions (SMFIF_*), offered by the MTA and requested by the milter.
/// Add/insert headers.
pub const SMFIF_ADDHDRS: u32 = 0x1;
/// Replace the body.
pub const SMFIF_CHGBODY: u32 = 0x2;
/// Add recipients.
pub const SMFIF_ADDRCPT: u32 = 0x4;
/// Delete recipients.
pub const SMFIF_DELRCPT: u32 = 0x8;
/// Change/delete headers.
pub const SMFIF_CHGHDRS: u32 = 0x10;
/// Quarantine.
pub const SMFIF_QUARANTINE: u32 = 0x20;
/// Change the envelope sender.
pub const SMFIF_CHGFROM: u32 = 0x40;
/// Add recipients with ESMTP arguments.
pub const SMFIF_ADDRCPT_PAR: u32 = 0x80;
/// Request macro lists in the negotiation reply.
pub const SMFIF_SETSYMLIST: u32 = 0x100;
/// Every action defined for protocol version 6.
pub const ALL_ACTIONS: u32 = 0x1ff;

// Protocol flags (SMFIP_*).
/// Don't send connect information.
pub const SMFIP_NOCONNECT: u32 = 0x1;
/// Don't send HELO.
pub const SMFIP_NOHELO: u32 = 0x2;
/// Don't send MAIL FROM.
pub const SMFIP_NOMAIL: u32 = 0x4;
/// Don't send RCPT TO.
pub const SMFIP_NORCPT: u32 = 0x8;
/// Don't send the body.
pub const SMFIP_NOBODY: u32 = 0x10;
/// Don't send headers.
pub const SMFIP_NOHDRS: u32 = 0x20;
/// Don't send end of headers.
pub const SMFIP_NOEOH: u32 = 0x40;
/// No reply to each header.
pub const SMFIP_NR_HDR: u32 = 0x80;
/// Don't send unknown commands.
pub const SMFIP_NOUNKNOWN: u32 = 0x100;
/// Don't send DATA.
pub const SMFIP_NODATA: u32 = 0x200;
/// The milter may answer `SMFIR_SKIP`.
pub const SMFIP_SKIP: u32 = 0x400;
/// Also send rejected recipients.
pub const SMFIP_RCPT_REJ: u32 = 0x800;
/// No reply to connect.
pub const SMFIP_NR_CONN: u32 = 0x1000;
/// No reply to HELO.
pub const SMFIP_NR_HELO: u32 = 0x2000;
/// No reply to MAIL FROM.
pub const SMFIP_NR_MAIL: u32 = 0x4000;
/// No reply to RCPT TO.
pub const SMFIP_NR_RCPT: u32 = 0x8000;
/// No reply to DATA.
pub const SMFIP_NR_DATA: u32 = 0x10000;
/// No reply to unknown commands.
pub const SMFIP_NR_UNKN: u32 = 0x20000;
/// No reply to end of headers.
pub const SMFIP_NR_EOH: u32 = 0x40000;
/// No reply to body chunks.
pub const SMFIP_NR_BODY: u32 = 0x80000;
/// Header values keep their leading space, both directions.
pub const SMFIP_HDR_LEADSPC: u32 = 0x100000;
/// Every protocol flag defined for version 6. This client can honour all of
/// them, so it offers all of them by default.
pub const ALL_PROTOCOL: u32 = 0x1f_ffff;
