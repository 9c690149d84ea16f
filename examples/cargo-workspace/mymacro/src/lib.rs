//! A proc-macro crate without dependencies (no syn/quote): a function-like macro and a derive.
use proc_macro::{TokenStream, TokenTree};

/// `const_sum!(1, 2, 3)` expands to the literal `6u64`.
#[proc_macro]
pub fn const_sum(input: TokenStream) -> TokenStream {
    let mut sum: u64 = 0;
    for tt in input {
        match tt {
            TokenTree::Literal(lit) => sum += lit.to_string().parse::<u64>().expect("integer literal"),
            TokenTree::Punct(p) if p.as_char() == ',' => {}
            other => panic!("const_sum!: unexpected token {other}"),
        }
    }
    format!("{sum}u64").parse().unwrap()
}

/// `#[derive(Describe)]` on a struct with named fields adds
/// `fn describe() -> &'static str` returning "<Name> with N fields: a, b".
#[proc_macro_derive(Describe)]
pub fn derive_describe(input: TokenStream) -> TokenStream {
    let mut tokens = input.into_iter();
    let mut name = None;
    let mut fields = Vec::new();
    while let Some(tt) = tokens.next() {
        if let TokenTree::Ident(id) = &tt {
            if id.to_string() == "struct" {
                name = tokens.next().map(|t| t.to_string());
            }
        }
        if let TokenTree::Group(g) = &tt {
            if name.is_some() && g.delimiter() == proc_macro::Delimiter::Brace {
                // Field names are the identifiers directly before a ':' at depth 0.
                let mut prev = None;
                for t in g.stream() {
                    if let TokenTree::Punct(p) = &t {
                        if p.as_char() == ':' {
                            if let Some(TokenTree::Ident(f)) = &prev {
                                fields.push(f.to_string());
                            }
                        }
                    }
                    prev = Some(t);
                }
            }
        }
    }
    let name = name.expect("#[derive(Describe)] needs a struct");
    format!(
        "impl {name} {{ pub fn describe() -> &'static str {{ \"{name} with {} fields: {}\" }} }}",
        fields.len(),
        fields.join(", ")
    )
    .parse()
    .unwrap()
}
