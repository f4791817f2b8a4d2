//! Routing keys: which conversation a request belongs to, so that every turn
//! lands on the worker holding its prefix in cache.

use spindle_proto::{GenerateRequest, PromptInput};

/// FNV-1a, 64 bit: stable across processes, builds and Rust versions.
pub(crate) fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Where the API layer may find a conversation identity, highest priority first.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeySources<'a> {
    /// `conversation` of a Responses request.
    pub conversation: Option<&'a str>,
    /// The first response of a `previous_response_id` chain.
    pub previous_response_root: Option<&'a str>,
    /// The request's `prompt_cache_key`.
    pub prompt_cache_key: Option<&'a str>,
    /// The `X-Session-Id` header.
    pub session_header: Option<&'a str>,
    /// The request's `safety_identifier`, else its `user`.
    pub user: Option<&'a str>,
    /// The tenant's prefix-cache salt (`--cache-isolation tenant` with API
    /// keys): it goes into the request and in front of the key, so two
    /// tenants' identical prompts never share a cache entry or a route.
    pub salt: Option<&'a str>,
}

/// The `cache_key` to put into [`GenerateRequest`]: the first non-empty source,
/// prefixed with its kind so that ids from different sources never collide.
pub fn cache_key_from(s: &KeySources<'_>) -> Option<String> {
    [
        ("conv", s.conversation),
        ("resp", s.previous_response_root),
        ("pck", s.prompt_cache_key),
        ("sess", s.session_header),
        ("user", s.user),
    ]
    .into_iter()
    .find_map(|(kind, v)| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| format!("{kind}:{v}"))
    })
}

/// Sets `req.cache_key` to the key the request is routed by, computed here
/// once (the balancer then only reads it): the first identity in `sources`,
/// else a hash of the prompt's stable start (see [`routing_key`]).
pub fn assign_routing_key(req: &mut GenerateRequest, sources: &KeySources<'_>) -> String {
    req.cache_key = cache_key_from(sources);
    let mut key = routing_key(req);
    // A LoRA's KV differs from the base model's: its conversations get
    // their own key, so they stick to the worker caching them.
    if !req.lora.is_empty() {
        key = format!("lora:{}|{key}", spindle_proto::lora::identity(&req.lora));
    }
    if let Some(salt) = sources.salt {
        key = format!("{salt}|{key}");
    }
    req.cache_salt = sources.salt.map(str::to_owned);
    req.cache_key = Some(key.clone());
    key
}

/// The `X-Session-Id` header, a routing identity for clients that do not chain.
pub fn session_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("x-session-id").and_then(|v| v.to_str().ok())
}

/// How many leading characters of a raw prompt identify its conversation.
const PROMPT_PREFIX_CHARS: usize = 512;
/// How many leading token ids identify a tokenized prompt's conversation.
const TOKEN_PREFIX: usize = 128;

/// The key a request is routed by: `cache_key` when the API layer set one;
/// otherwise a hash of what stays the same across the turns of a stateless
/// chat — the system/developer messages and the first user message (or the
/// first 512 characters of a raw prompt, the first 128 tokens of a tokenized one).
pub fn routing_key(req: &GenerateRequest) -> String {
    if let Some(k) = req.cache_key.as_deref().filter(|k| !k.is_empty()) {
        return k.to_owned();
    }
    let mut h = FNV_OFFSET;
    match &req.input {
        PromptInput::Messages(msgs) => {
            for m in msgs {
                let user = m.role == "user";
                if user || m.role == "system" || m.role == "developer" {
                    h = fnv1a(m.role.as_bytes(), h);
                    h = fnv1a(&[0], h);
                    h = fnv1a(m.content.as_bytes(), h);
                    h = fnv1a(&[0], h);
                }
                if user {
                    break;
                }
            }
        }
        PromptInput::Prompt(p) => {
            let end = p
                .char_indices()
                .nth(PROMPT_PREFIX_CHARS)
                .map_or(p.len(), |(i, _)| i);
            h = fnv1a(b"prompt\0", h);
            h = fnv1a(&p.as_bytes()[..end], h);
        }
        PromptInput::Tokens(t) => {
            h = fnv1a(b"tokens\0", h);
            for id in t.iter().take(TOKEN_PREFIX) {
                h = fnv1a(&id.to_le_bytes(), h);
            }
        }
    }
    format!("h:{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_proto::{ChatMessage, SamplingParams};

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::text(role, content)
    }

    fn req(input: PromptInput, cache_key: Option<&str>) -> GenerateRequest {
        GenerateRequest {
            request_id: None,
            model: None,
            input,
            continuation: None,
            sampling: SamplingParams::default(),
            cache_key: cache_key.map(str::to_owned),
            cache_salt: None,
            output: Default::default(),
            truncation: Default::default(),
            lora: Vec::new(),
        }
    }

    #[test]
    fn each_source_in_priority_order() {
        let all = KeySources {
            conversation: Some("conv_1"),
            previous_response_root: Some("resp_1"),
            prompt_cache_key: Some("pck"),
            session_header: Some("sess"),
            user: Some("alice"),
            salt: None,
        };
        assert_eq!(cache_key_from(&all).unwrap(), "conv:conv_1");
        let s = KeySources {
            conversation: None,
            ..all
        };
        assert_eq!(cache_key_from(&s).unwrap(), "resp:resp_1");
        let s = KeySources {
            previous_response_root: Some(" "),
            ..s
        };
        assert_eq!(cache_key_from(&s).unwrap(), "pck:pck");
        let s = KeySources {
            prompt_cache_key: None,
            ..s
        };
        assert_eq!(cache_key_from(&s).unwrap(), "sess:sess");
        let s = KeySources {
            session_header: None,
            ..s
        };
        assert_eq!(cache_key_from(&s).unwrap(), "user:alice");
        assert_eq!(cache_key_from(&KeySources::default()), None);
    }

    #[test]
    fn assigned_once_and_the_same_for_every_api() {
        let mut r = req(PromptInput::Messages(vec![msg("user", "hi")]), None);
        let sources = KeySources {
            user: Some("alice"),
            ..KeySources::default()
        };
        assert_eq!(assign_routing_key(&mut r, &sources), "user:alice");
        assert_eq!(r.cache_key.as_deref(), Some("user:alice"));
        // The balancer reads it back without hashing again.
        assert_eq!(routing_key(&r), "user:alice");
        let mut anon = req(PromptInput::Messages(vec![msg("user", "hi")]), None);
        let key = assign_routing_key(&mut anon, &KeySources::default());
        assert!(key.starts_with("h:") && anon.cache_key == Some(key));
        assert_eq!(anon.cache_salt, None);
    }

    #[test]
    fn a_salt_isolates_the_cache_and_the_route() {
        let hi = || req(PromptInput::Messages(vec![msg("user", "hi")]), None);
        let (mut a, mut b) = (hi(), hi());
        let salted = |salt| KeySources {
            salt: Some(salt),
            ..KeySources::default()
        };
        let ka = assign_routing_key(&mut a, &salted("t_a"));
        let kb = assign_routing_key(&mut b, &salted("t_b"));
        assert_ne!(ka, kb, "same prompt, different tenants: different keys");
        assert!(ka.starts_with("t_a|h:"), "{ka}");
        assert_eq!(a.cache_salt.as_deref(), Some("t_a"));
        assert_eq!(b.cache_salt.as_deref(), Some("t_b"));
    }

    #[test]
    fn an_adapter_gets_its_own_key() {
        let sources = KeySources {
            user: Some("alice"),
            ..KeySources::default()
        };
        let mut base = req(PromptInput::Messages(vec![msg("user", "hi")]), None);
        let mut tuned = base.clone();
        tuned.lora = vec![spindle_proto::lora::LoraSelection {
            name: "pirate".into(),
            scale: 0.5,
        }];
        assert_eq!(assign_routing_key(&mut base, &sources), "user:alice");
        let key = assign_routing_key(&mut tuned, &sources);
        assert_eq!(key, "lora:pirate@0.5|user:alice");
        assert_eq!(tuned.cache_key.as_deref(), Some(key.as_str()));
    }

    #[test]
    fn cache_key_wins() {
        let r = req(
            PromptInput::Messages(vec![msg("user", "hi")]),
            Some("conv:7"),
        );
        assert_eq!(routing_key(&r), "conv:7");
        let r = req(PromptInput::Messages(vec![msg("user", "hi")]), Some(""));
        assert!(routing_key(&r).starts_with("h:"));
    }

    #[test]
    fn stateless_chat_sticks_across_turns() {
        let t1 = vec![msg("system", "be brief"), msg("user", "tell me a story")];
        let mut t2 = t1.clone();
        t2.push(msg("assistant", "Once upon a time"));
        t2.push(msg("user", "go on"));
        let k1 = routing_key(&req(PromptInput::Messages(t1.clone()), None));
        let k2 = routing_key(&req(PromptInput::Messages(t2), None));
        assert_eq!(k1, k2);
        // A different first question or system prompt is another conversation.
        let other = vec![msg("system", "be brief"), msg("user", "tell me a joke")];
        assert_ne!(k1, routing_key(&req(PromptInput::Messages(other), None)));
        let other = vec![msg("system", "be long"), msg("user", "tell me a story")];
        assert_ne!(k1, routing_key(&req(PromptInput::Messages(other), None)));
        // Stable across runs (the ring depends on it).
        assert_eq!(k1, routing_key(&req(PromptInput::Messages(t1), None)));
    }

    #[test]
    fn prompts_and_tokens_use_their_prefix() {
        let long = "x".repeat(600);
        let a = routing_key(&req(PromptInput::Prompt(format!("{long}a")), None));
        let b = routing_key(&req(PromptInput::Prompt(format!("{long}b")), None));
        assert_eq!(a, b);
        let c = routing_key(&req(PromptInput::Prompt("y".into()), None));
        assert_ne!(a, c);
        let t1: Vec<i32> = (0..200).collect();
        let mut t2 = t1.clone();
        t2.push(5);
        assert_eq!(
            routing_key(&req(PromptInput::Tokens(t1), None)),
            routing_key(&req(PromptInput::Tokens(t2), None))
        );
        assert_ne!(
            routing_key(&req(PromptInput::Tokens(vec![1]), None)),
            routing_key(&req(PromptInput::Tokens(vec![2]), None))
        );
    }
}
