//! The report XML: mail-auth 0.13.3's `Report::to_xml`, read back into a small tree and fixed up
//! for the chosen schema, then written out again. Checked against both XSDs
//! (tests/dmarc_reports.rs, xmllint). What mail-auth gets wrong or cannot say:
//!
//! - it always writes the RFC 9990 namespace; RFC 7489 reports have none;
//! - it has no `pct` (RFC 7489 requires it in `policy_published`) and writes RFC 9990's `np`,
//!   `testing`, `discovery_method` and `generator`, which the RFC 7489 schema forbids;
//! - it drops an SPF result of scope `helo` (written here without scope for RFC 9990, which
//!   knows only `mfrom`, and with `<scope>helo</scope>` for RFC 7489, which requires a scope);
//! - it has no `sampled_out` reason (RFC 7489);
//! - the RFC 7489 schema only accepts IPv6 addresses in full eight-group form;
//! - it writes control characters unescaped (invalid XML); the tree writer drops them.

use crate::aggregate::{Built, SAMPLED_OUT};
use crate::config::Schema;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::fmt::Write as _;
use std::net::IpAddr;

pub const NS_9990: &str = "urn:ietf:params:xml:ns:dmarc-2.0";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn new(name: &str, text: &str) -> Element {
        Element {
            name: name.into(),
            attrs: Vec::new(),
            children: Vec::new(),
            text: text.into(),
        }
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn for_each_mut(&mut self, path: &[&str], f: &mut dyn FnMut(&mut Element)) {
        match path {
            [] => f(self),
            [first, rest @ ..] => {
                for c in self.children.iter_mut().filter(|c| c.name == *first) {
                    c.for_each_mut(rest, f);
                }
            }
        }
    }
}

/// The report as XML in `schema`.
pub fn render(built: &Built, schema: Schema) -> String {
    let raw = built.report.to_xml();
    let mut root = match parse_tree(&raw) {
        Ok(r) => r,
        // mail-auth's writer escapes text, so its output always reads back; if it ever did
        // not, sending its text beats sending nothing.
        Err(_) => return raw,
    };
    match schema {
        Schema::Rfc9990 => {
            root.attrs = vec![("xmlns".into(), NS_9990.into())];
        }
        Schema::Rfc7489 => to_7489(&mut root, built.pct),
    }
    let mut out = String::with_capacity(raw.len() + 64);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    write_element(&root, 0, &mut out);
    out
}

fn to_7489(root: &mut Element, pct: u8) {
    root.attrs.clear();
    if let Some(meta) = root.child_mut("report_metadata") {
        meta.children.retain(|c| c.name != "generator");
    }
    if let Some(pp) = root.child_mut("policy_published") {
        pp.children
            .retain(|c| !matches!(c.name.as_str(), "np" | "testing" | "discovery_method"));
        pp.children.push(Element::new("pct", &pct.to_string()));
    }
    root.for_each_mut(&["record", "row", "source_ip"], &mut |ip| {
        if let Ok(IpAddr::V6(v6)) = ip.text.parse::<IpAddr>() {
            let s = v6.segments();
            ip.text = s
                .iter()
                .map(|g| format!("{g:x}"))
                .collect::<Vec<_>>()
                .join(":");
        }
    });
    root.for_each_mut(&["record", "row", "policy_evaluated", "reason"], &mut |r| {
        let sampled = r.child("comment").map(|c| c.text.as_str()) == Some(SAMPLED_OUT);
        let t = r.child("type").map(|c| c.text.clone()).unwrap_or_default();
        let new_type = if sampled {
            r.children.retain(|c| c.name != "comment");
            "sampled_out"
        } else if matches!(
            t.as_str(),
            "forwarded" | "sampled_out" | "trusted_forwarder" | "mailing_list" | "local_policy"
        ) {
            return;
        } else {
            // RFC 9990's policy_test_mode is not an RFC 7489 type.
            "other"
        };
        if let Some(ty) = r.child_mut("type") {
            ty.text = new_type.into();
        }
    });
    root.for_each_mut(&["record", "auth_results", "spf"], &mut |spf| {
        if spf.child("scope").is_none() {
            let at = spf
                .children
                .iter()
                .position(|c| c.name == "domain")
                .map_or(0, |p| p + 1);
            spf.children.insert(at, Element::new("scope", "helo"));
        }
    });
}

fn parse_tree(xml: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let mut el = Element::new(e.name().as_ref(), "");
                for a in e.attributes().flatten() {
                    el.attrs
                        .push((a.key.as_ref().to_string(), a.value.to_string()));
                }
                stack.push(el);
            }
            Event::Empty(e) => {
                let el = Element::new(e.name().as_ref(), "");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text
                        .push_str(&t.xml_content(quick_xml::XmlVersion::Implicit1_0));
                }
            }
            Event::GeneralRef(r) => {
                let s = match r.as_ref() {
                    "lt" => "<".to_string(),
                    "gt" => ">".to_string(),
                    "amp" => "&".to_string(),
                    "apos" => "'".to_string(),
                    "quot" => "\"".to_string(),
                    _ => r
                        .resolve_char_ref()
                        .ok()
                        .flatten()
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                };
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&s);
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("unbalanced end tag")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    root.ok_or_else(|| "no root element".into())
}

fn write_element(el: &Element, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let _ = write!(out, "{indent}<{}", el.name);
    for (k, v) in &el.attrs {
        let _ = write!(out, " {k}=\"{}\"", escape(v));
    }
    if el.children.is_empty() {
        let _ = writeln!(out, ">{}</{}>", escape(&el.text), el.name);
    } else {
        out.push_str(">\n");
        for c in &el.children {
            write_element(c, depth + 1, out);
        }
        let _ = writeln!(out, "{indent}</{}>", el.name);
    }
}

/// XML 1.0 text: the five specials escaped, characters XML cannot carry dropped.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::{config, row};
    use crate::aggregate::{build, Meta};

    fn built(schema: &str, rows: &[dmarc_policy::history::Record]) -> (String, Schema) {
        let cfg = config(schema);
        let meta = Meta {
            config: &cfg,
            report_id: "r<1>&",
            policy_domain: "example.com",
            begin: 0,
            end: 86399,
        };
        (render(&build(&meta, rows), cfg.schema), cfg.schema)
    }

    #[test]
    fn rfc7489_has_pct_no_namespace_and_helo_scope() {
        let mut helo = row("2001:db8::1", "fail", "pass");
        helo.spf = Some(("mx.example.com".into(), "helo".into(), "pass".into()));
        helo.override_reason = Some("sampled_out".into());
        let (xml, _) = built("rfc7489", &[helo]);
        assert!(xml.contains("<feedback>\n"), "{xml}");
        assert!(xml.contains("<pct>50</pct>"), "{xml}");
        assert!(!xml.contains("<np>") && !xml.contains("<testing>"), "{xml}");
        assert!(
            xml.contains("<source_ip>2001:db8:0:0:0:0:0:1</source_ip>"),
            "{xml}"
        );
        let flat = xml.replace([' ', '\n'], "");
        assert!(
            flat.contains("<domain>mx.example.com</domain><scope>helo</scope>"),
            "{xml}"
        );
        assert!(xml.contains("<type>sampled_out</type>"), "{xml}");
        assert!(
            xml.contains("<report_id>r&lt;1&gt;&amp;</report_id>"),
            "{xml}"
        );
    }

    #[test]
    fn rfc9990_keeps_helo_spf_without_scope() {
        let mut helo = row("192.0.2.9", "pass", "pass");
        helo.spf = Some(("mx.example.com".into(), "helo".into(), "pass".into()));
        let (xml, _) = built("rfc9990", &[helo]);
        assert!(
            xml.contains(&format!("<feedback xmlns=\"{NS_9990}\">")),
            "{xml}"
        );
        let flat = xml.replace([' ', '\n'], "");
        assert!(
            flat.contains("<domain>mx.example.com</domain><result>pass</result>"),
            "{xml}"
        );
        assert!(!xml.contains("<pct>"), "{xml}");
        assert!(xml.contains("<np>reject</np>"), "{xml}");
    }

    #[test]
    fn escape_drops_control_characters() {
        assert_eq!(escape("a\u{1}b<"), "ab&lt;");
    }
}
