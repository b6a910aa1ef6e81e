//! Tests of the checks and of the expansion's shape, on token streams.
//!
//! That the expansion compiles against the real `multiloop` crate is tested
//! there; the cases that must not compile, with their messages, are the UI
//! tests in `crates/multiloop/tests/ui/` (trybuild).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;
use syn::{ImplItem, ItemFn, ItemImpl, parse_quote};

fn tokens(tokens: &impl ToTokens) -> String {
    tokens.to_token_stream().to_string()
}

/// The messages of the errors that `check_signature` reports for `func`.
fn signature_errors(func: ItemFn) -> Vec<String> {
    match check_signature(&func.sig) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
    }
}

fn single_error(func: ItemFn) -> String {
    let errors = signature_errors(func);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:?}");
    errors.into_iter().next().unwrap()
}

fn option_error(attr: TokenStream) -> String {
    match parse_options(attr) {
        Ok(_) => panic!("options accepted"),
        Err(error) => error.to_string(),
    }
}

// --- return type classification ---

fn result_of(func: &ItemFn) -> Option<(String, String)> {
    match classify_return(&func.sig.output) {
        Returns::Result { ok, err } => Some((tokens(ok), tokens(err))),
        _ => None,
    }
}

#[test]
fn no_return_type_is_unit() {
    let func: ItemFn = parse_quote!(
        async fn f() {}
    );
    assert!(matches!(classify_return(&func.sig.output), Returns::Unit));
}

#[test]
fn two_argument_results_are_results_whatever_their_path() {
    for func in [
        parse_quote!(
            async fn f() -> Result<u64, MyErr> {}
        ),
        parse_quote!(
            async fn f() -> std::result::Result<u64, MyErr> {}
        ),
        parse_quote!(
            async fn f() -> ::core::result::Result<u64, MyErr> {}
        ),
        parse_quote!(
            async fn f() -> (Result<u64, MyErr>) {}
        ),
    ] {
        assert_eq!(
            result_of(&func),
            Some((tokens(&quote!(u64)), tokens(&quote!(MyErr)))),
            "{}",
            tokens(&func.sig.output),
        );
    }
}

#[test]
fn result_with_generic_parts_keeps_them() {
    let func: ItemFn = parse_quote!(
        async fn f() -> Result<Vec<(u8, String)>, errors::E> {}
    );
    assert_eq!(
        result_of(&func),
        Some((
            tokens(&quote!(Vec<(u8, String)>)),
            tokens(&quote!(errors::E))
        )),
    );
}

#[test]
fn other_return_types_are_plain_values() {
    for func in [
        parse_quote!(
            async fn f() -> u64 {}
        ),
        parse_quote!(
            async fn f() -> anyhow::Result<u64> {}
        ),
        parse_quote!(
            async fn f() -> io::Result<()> {}
        ),
        parse_quote!(
            async fn f() -> Option<Result<u8, E>> {}
        ),
        parse_quote!(
            async fn f() -> MyResult<u8, E> {}
        ),
        parse_quote!(
            async fn f() -> Result<u8, E, X> {}
        ),
        parse_quote!(
            async fn f() -> Result {}
        ),
        parse_quote!(
            async fn f() -> Result<u8, 3> {}
        ),
        parse_quote!(
            async fn f() -> <T as Tr>::Result<u8, E> {}
        ),
        parse_quote!(
            async fn f() -> () {}
        ),
    ] {
        let func: ItemFn = func;
        match classify_return(&func.sig.output) {
            Returns::Value(ty) => {
                assert_eq!(
                    format!("-> {}", tokens(ty)),
                    tokens(&func.sig.output),
                    "the whole type is the output"
                );
            }
            _ => panic!("{} is not a plain value", tokens(&func.sig.output)),
        }
    }
}

// --- signature checks ---

#[test]
fn owned_arguments_are_accepted() {
    let func: ItemFn = parse_quote! {
        async fn f(
            a: u64,
            mut b: String,
            _: Vec<u8>,
            #[allow(unused)] c: std::collections::HashMap<String, Vec<(u8, i32)>>,
            d: std::borrow::Cow<'static, str>,
            e: [u8; 4],
        ) -> Result<Vec<String>, MyError> {}
    };
    let types = check_signature(&func.sig).expect("valid signature");
    assert_eq!(types.len(), 6);
    assert_eq!(tokens(types[1]), "String");
}

#[test]
fn no_arguments_is_fine() {
    let func: ItemFn = parse_quote!(
        pub(crate) async fn f() {}
    );
    assert!(check_signature(&func.sig).expect("valid").is_empty());
}

#[test]
fn non_async_is_refused() {
    assert_eq!(
        single_error(parse_quote!(
            fn f() {}
        )),
        "multiloop tasks must be `async fn`"
    );
}

#[test]
fn const_unsafe_and_extern_are_refused() {
    assert_eq!(
        signature_errors(parse_quote!(
            const unsafe extern "C" fn f() {}
        )),
        [
            "multiloop tasks cannot be `const fn`",
            "multiloop tasks must be `async fn`",
            "multiloop tasks cannot be `unsafe fn`",
            "multiloop tasks cannot be `extern` functions",
        ],
    );
    assert_eq!(
        single_error(parse_quote!(
            async unsafe fn f() {}
        )),
        "multiloop tasks cannot be `unsafe fn`"
    );
}

#[test]
fn generics_are_refused() {
    let generic = "multiloop tasks cannot be generic: a worker finds a task by its name, \
                   so its types must be concrete";
    assert_eq!(
        single_error(parse_quote!(
            async fn f<T>(t: T) {}
        )),
        generic
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f<const N: usize>() {}
        )),
        generic
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f<'a>() {}
        )),
        generic
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f()
            where
                u8: Copy,
            {
            }
        )),
        "multiloop tasks cannot have a `where` clause"
    );
}

#[test]
fn self_is_refused() {
    let message = "multiloop tasks cannot take `self`: write a free `async fn`";
    assert_eq!(
        single_error(parse_quote!(
            async fn f(self) {}
        )),
        message
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f(&self, a: u8) {}
        )),
        message
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f(self: Box<Self>) {}
        )),
        message
    );
}

#[test]
fn references_are_refused_with_an_owned_suggestion() {
    let cases: [(ItemFn, &str); 8] = [
        (
            parse_quote!(
                async fn f(s: &str) {}
            ),
            "`&str` borrows; use `String`",
        ),
        (
            parse_quote!(
                async fn f(s: &'static str) {}
            ),
            "`&'static str` borrows; use `String`",
        ),
        (
            parse_quote!(
                async fn f(b: &[u8]) {}
            ),
            "`&[u8]` borrows; use `Vec<u8>`",
        ),
        (
            parse_quote!(
                async fn f(b: &mut [u8]) {}
            ),
            "`&mut [u8]` borrows; use `Vec<u8>`",
        ),
        (
            parse_quote!(
                async fn f(p: &std::path::Path) {}
            ),
            "`&std::path::Path` borrows; use `PathBuf`",
        ),
        (
            parse_quote!(
                async fn f(c: &Config) {}
            ),
            "`&Config` borrows; use `Config`",
        ),
        (
            parse_quote!(
                async fn f(m: &HashMap<String, Vec<u8>>) {}
            ),
            "`&HashMap<String, Vec<u8>>` borrows; use `HashMap<String, Vec<u8>>`",
        ),
        (
            parse_quote!(
                async fn f(v: Vec<&str>) {}
            ),
            "`&str` borrows; use `String`",
        ),
    ];
    for (func, expected) in cases {
        assert_eq!(
            single_error(func),
            format!("multiloop tasks take owned arguments: {expected}")
        );
    }
}

#[test]
fn borrowed_return_types_are_refused() {
    assert_eq!(
        single_error(parse_quote!(
            async fn f() -> &'static str {}
        )),
        "multiloop tasks return owned values: `&'static str` borrows; use `String`"
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f() -> Result<Vec<u8>, &'static str> {}
        )),
        "multiloop tasks return owned values: `&'static str` borrows; use `String`"
    );
}

#[test]
fn lifetimes_other_than_static_are_refused() {
    assert_eq!(
        single_error(parse_quote!(
            async fn f(c: Cow<'a, str>) {}
        )),
        "multiloop tasks take owned arguments: the lifetime `'a` borrows; use an owned type"
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f(c: Wrapper<'_>) {}
        )),
        "multiloop tasks take owned arguments: the lifetime `'_` borrows; use an owned type"
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f() -> Cow<'a, str> {}
        )),
        "multiloop tasks return owned values: the lifetime `'a` borrows; use an owned type"
    );
}

#[test]
fn impl_trait_is_refused() {
    assert_eq!(
        single_error(parse_quote!(
            async fn f(x: impl Into<String>) {}
        )),
        "multiloop tasks cannot take `impl Trait` arguments: arguments are sent to a worker, \
         so name a concrete type"
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f(x: Vec<impl Clone>) {}
        )),
        "multiloop tasks cannot take `impl Trait` arguments: arguments are sent to a worker, \
         so name a concrete type"
    );
    assert_eq!(
        single_error(parse_quote!(
            async fn f() -> impl Clone {}
        )),
        "multiloop tasks cannot return `impl Trait`: the value is sent back from a worker, \
         so name a concrete type"
    );
}

#[test]
fn function_pointers_and_trait_objects_are_left_to_the_serde_check() {
    // Not serde types either way, but a message about the `&` inside would mislead.
    assert!(
        signature_errors(parse_quote!(
            async fn f(g: fn(&str) -> usize) {}
        ))
        .is_empty()
    );
    assert!(
        signature_errors(parse_quote!(
            async fn f(g: Box<dyn Fn(&str)>) {}
        ))
        .is_empty()
    );
}

#[test]
fn patterns_other_than_names_are_refused() {
    let message = "multiloop task arguments must be plain names (`x: T` or `mut x: T`); \
                   destructure inside the body";
    for func in [
        parse_quote!(
            async fn f((a, b): (u8, u8)) {}
        ),
        parse_quote!(
            async fn f(Point { x, y }: Point) {}
        ),
        parse_quote!(
            async fn f(ref a: u8) {}
        ),
        parse_quote!(
            async fn f(a @ 1..=3: u8) {}
        ),
        parse_quote!(
            async fn f([a, b]: [u8; 2]) {}
        ),
    ] {
        assert_eq!(single_error(func), message);
    }
}

#[test]
fn too_many_arguments_are_refused() {
    let ok: ItemFn = parse_quote! {
        async fn f(a0: u8, a1: u8, a2: u8, a3: u8, a4: u8, a5: u8, a6: u8, a7: u8,
                   a8: u8, a9: u8, a10: u8, a11: u8, a12: u8, a13: u8, a14: u8, a15: u8) {}
    };
    assert!(signature_errors(ok).is_empty());
    let too_many: ItemFn = parse_quote! {
        async fn f(a0: u8, a1: u8, a2: u8, a3: u8, a4: u8, a5: u8, a6: u8, a7: u8,
                   a8: u8, a9: u8, a10: u8, a11: u8, a12: u8, a13: u8, a14: u8, a15: u8,
                   a16: u8) {}
    };
    assert_eq!(
        single_error(too_many),
        "multiloop tasks take at most 16 arguments; group them in a struct"
    );
}

#[test]
fn all_errors_of_a_signature_are_reported_together() {
    let errors = signature_errors(parse_quote!(
        fn f<T>(&self, s: &str, (a, b): (u8, u8)) {}
    ));
    assert_eq!(errors.len(), 5, "{errors:?}");
}

// --- attribute options ---

#[test]
fn options_may_be_empty() {
    assert!(parse_options(quote!()).expect("no options").name.is_none());
}

#[test]
fn name_option_is_taken() {
    let options = parse_options(quote!(name = "billing::charge_v1")).expect("valid");
    assert_eq!(
        options.name.map(|name| name.value()).as_deref(),
        Some("billing::charge_v1")
    );
}

#[test]
fn bad_options_are_refused() {
    assert_eq!(
        option_error(quote!(retries = 3)),
        "unknown `multiloop::task` option; the only one is `name = \"...\"`"
    );
    assert_eq!(
        option_error(quote!(name = "a", name = "b")),
        "duplicate `name` option"
    );
    assert_eq!(
        option_error(quote!(name = "  ")),
        "the task name cannot be empty"
    );
    assert_eq!(option_error(quote!(name = 3)), "expected string literal");
    assert_eq!(option_error(quote!(name)), "expected `=`");
}

#[test]
fn non_functions_are_refused() {
    for item in [
        quote!(
            struct S;
        ),
        quote!(
            mod m {}
        ),
        quote!(let x = 1;),
    ] {
        let error = match parse_item(item) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        };
        assert_eq!(error, "`#[multiloop::task]` applies to an `async fn`");
    }
}

// --- pretty printing for messages ---

#[test]
fn types_print_as_written() {
    let cases: [(Type, &str); 10] = [
        (parse_quote!(&'a str), "&'a str"),
        (parse_quote!(&mut (u8, u8)), "&mut (u8, u8)"),
        (parse_quote!(*const [u8]), "*const [u8]"),
        (parse_quote!(&mut [u8]), "&mut [u8]"),
        (
            parse_quote!(std::collections::HashMap<String, Vec<u8>>),
            "std::collections::HashMap<String, Vec<u8>>",
        ),
        (parse_quote!([u8; 4]), "[u8; 4]"),
        (parse_quote!((u8, String,)), "(u8, String,)"),
        (parse_quote!(fn(u8) -> u8), "fn(u8) -> u8"),
        (
            parse_quote!(Box<dyn Error + Send + 'static>),
            "Box<dyn Error + Send + 'static>",
        ),
        (parse_quote!(Iter<Item = u8>), "Iter<Item = u8>"),
    ];
    for (ty, expected) in cases {
        assert_eq!(pretty(&ty), expected);
    }
}

// --- expansion ---

/// Expands `#[task(attr)] item` and parses the result back.
fn expand_to_file(attr: TokenStream, item: TokenStream) -> syn::File {
    let out = expand(attr, item);
    syn::parse2(out.clone()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn task_impl(file: &syn::File) -> &ItemImpl {
    file.items
        .iter()
        .find_map(|item| match item {
            Item::Impl(imp) if imp.trait_.is_some() => Some(imp),
            _ => None,
        })
        .expect("an impl of Task")
}

fn inherent_impl(file: &syn::File) -> &ItemImpl {
    file.items
        .iter()
        .find_map(|item| match item {
            Item::Impl(imp) if imp.trait_.is_none() => Some(imp),
            _ => None,
        })
        .expect("an inherent impl")
}

/// The `Task` impl's associated type `name`, as a string.
fn assoc_type(file: &syn::File, name: &str) -> String {
    task_impl(file)
        .items
        .iter()
        .find_map(|item| match item {
            ImplItem::Type(ty) if ty.ident == name => Some(tokens(&ty.ty)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no type {name}"))
}

fn assoc_const(file: &syn::File) -> String {
    task_impl(file)
        .items
        .iter()
        .find_map(|item| match item {
            ImplItem::Const(c) if c.ident == "NAME" => Some(tokens(&c.expr)),
            _ => None,
        })
        .expect("NAME")
}

fn call_body(file: &syn::File) -> String {
    task_impl(file)
        .items
        .iter()
        .find_map(|item| match item {
            ImplItem::Fn(f) if f.sig.ident == "call" => Some(tokens(&f.block)),
            _ => None,
        })
        .expect("fn call")
}

fn run_fn(file: &syn::File) -> &syn::ImplItemFn {
    inherent_impl(file)
        .items
        .iter()
        .find_map(|item| match item {
            ImplItem::Fn(f) => Some(f),
            _ => None,
        })
        .expect("fn run")
}

fn struct_item(file: &syn::File) -> &syn::ItemStruct {
    file.items
        .iter()
        .find_map(|item| match item {
            Item::Struct(s) => Some(s),
            _ => None,
        })
        .expect("a struct")
}

fn attr_names(attrs: &[Attribute]) -> Vec<String> {
    attrs.iter().map(|a| tokens(a.path())).collect()
}

#[test]
fn result_task_expands_to_struct_run_impl_and_registration() {
    let file = expand_to_file(
        quote!(),
        quote! {
            /// Adds.
            #[allow(clippy::needless_return)]
            pub async fn add(a: u64, mut b: u64) -> Result<u64, MyErr> { b += a; return Ok(b); }
        },
    );

    let s = struct_item(&file);
    assert_eq!(s.ident, "add");
    assert_eq!(tokens(&s.vis), "pub");
    assert!(matches!(s.fields, syn::Fields::Unit));
    assert_eq!(attr_names(&s.attrs), ["doc", "allow", "derive"]);

    let run = run_fn(&file);
    assert_eq!(run.sig.ident, "run");
    assert!(run.sig.asyncness.is_some());
    assert_eq!(tokens(&run.vis), "pub");
    assert_eq!(tokens(&run.sig.inputs), tokens(&quote!(a: u64, mut b: u64)));
    assert_eq!(attr_names(&run.attrs), ["doc", "allow"]);
    assert_eq!(tokens(&inherent_impl(&file).self_ty), "add");

    let task = task_impl(&file);
    assert_eq!(
        tokens(&task.trait_.as_ref().unwrap().1),
        ":: multiloop :: Task"
    );
    assert_eq!(tokens(&task.self_ty), "add");
    assert_eq!(assoc_type(&file, "Args"), tokens(&quote!((u64, u64))));
    assert_eq!(assoc_type(&file, "Output"), "u64");
    assert_eq!(assoc_type(&file, "Error"), "MyErr");
    assert_eq!(
        assoc_const(&file),
        tokens(&quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            "add"
        )))
    );
    assert_eq!(
        call_body(&file),
        tokens(&quote!({
            let (arg0, arg1) = args;
            add::run(arg0, arg1)
        }))
    );

    let registration = tokens(&file);
    assert!(
        registration.contains(&tokens(&quote!(
            ::multiloop::__private::linkme::distributed_slice(::multiloop::__private::TASKS)
        ))),
        "the task is registered in the TASKS slice: {registration}"
    );
    assert!(registration.contains(":: multiloop :: __private :: TaskEntry :: new :: < add > ()"));

    // One assertion per argument, one for the output, one for the error.
    let assertions: Vec<String> = file
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Const(c) => Some(tokens(&c.expr)),
            _ => None,
        })
        .filter(|c| !c.contains("distributed_slice"))
        .collect();
    assert_eq!(assertions.len(), 4);
    assert!(
        assertions[0].contains("assert_task_argument :: < u64 >"),
        "{}",
        assertions[0]
    );
    assert!(
        assertions[2].contains("assert_task_output :: < u64 >"),
        "{}",
        assertions[2]
    );
    assert!(
        assertions[3].contains("assert_task_error :: < MyErr >"),
        "{}",
        assertions[3]
    );
    assert!(assertions[3].contains("Debug"), "{}", assertions[3]);
}

#[test]
fn one_argument_is_its_own_type_not_a_tuple() {
    let file = expand_to_file(
        quote!(),
        quote!(
            async fn echo(s: String) -> String {
                s
            }
        ),
    );
    assert_eq!(assoc_type(&file, "Args"), "String");
    assert_eq!(assoc_type(&file, "Output"), "String");
    assert_eq!(
        assoc_type(&file, "Error"),
        tokens(&quote!(::multiloop::NoError))
    );
    assert_eq!(
        call_body(&file),
        tokens(&quote!({
            let arg0 = args;
            async move { ::core::result::Result::Ok::<_, ::multiloop::NoError>(echo::run(arg0).await) }
        }))
    );
    // Private function, private struct and `run`.
    assert_eq!(tokens(&struct_item(&file).vis), "");
    assert_eq!(tokens(&run_fn(&file).vis), "");
}

#[test]
fn no_arguments_and_no_return_type() {
    let file = expand_to_file(
        quote!(),
        quote!(
            pub(crate) async fn ping() {}
        ),
    );
    assert_eq!(assoc_type(&file, "Args"), "()");
    assert_eq!(assoc_type(&file, "Output"), "()");
    assert_eq!(
        assoc_type(&file, "Error"),
        tokens(&quote!(::multiloop::NoError))
    );
    assert!(
        call_body(&file).starts_with("{ let () = args ;"),
        "{}",
        call_body(&file)
    );
    assert_eq!(tokens(&struct_item(&file).vis), tokens(&quote!(pub(crate))));
    // No assertion: `()` and `NoError` need none.
    assert!(!file.items.iter().any(
        |item| matches!(item, Item::Const(c) if !tokens(&c.expr).contains("distributed_slice"))
    ));
}

#[test]
fn one_argument_result_alias_is_a_plain_output() {
    let file = expand_to_file(
        quote!(),
        quote!(
            async fn f(x: u8) -> io::Result<u8> {
                Ok(x)
            }
        ),
    );
    assert_eq!(assoc_type(&file, "Output"), tokens(&quote!(io::Result<u8>)));
    assert_eq!(
        assoc_type(&file, "Error"),
        tokens(&quote!(::multiloop::NoError))
    );
}

#[test]
fn name_option_overrides_the_name() {
    let file = expand_to_file(
        quote!(name = "billing::charge_v1"),
        quote!(
            async fn charge() {}
        ),
    );
    assert_eq!(assoc_const(&file), "\"billing::charge_v1\"");
}

#[test]
fn raw_identifiers_are_named_without_the_prefix() {
    let file = expand_to_file(
        quote!(),
        quote!(
            async fn r#match() {}
        ),
    );
    assert_eq!(struct_item(&file).ident, "r#match");
    assert!(
        assoc_const(&file).contains("\"match\""),
        "{}",
        assoc_const(&file)
    );
}

#[test]
fn cfg_applies_to_every_generated_item() {
    let file = expand_to_file(
        quote!(),
        quote!(
            #[cfg(unix)]
            #[inline]
            async fn f(x: u8) {}
        ),
    );
    for item in &file.items {
        let attrs = match item {
            Item::Struct(i) => &i.attrs,
            Item::Impl(i) => &i.attrs,
            Item::Macro(i) => &i.attrs,
            Item::Const(i) => &i.attrs,
            other => panic!("unexpected item {}", tokens(other)),
        };
        assert!(
            attr_names(attrs).contains(&"cfg".to_owned()),
            "{}",
            tokens(item)
        );
    }
    assert_eq!(attr_names(&run_fn(&file).attrs), ["doc", "inline"]);
}

#[test]
fn errors_are_emitted_with_the_item_unchanged() {
    let item = quote!(
        async fn f(s: &str) -> usize {
            s.len()
        }
    );
    let out = expand(quote!(), item.clone()).to_string();
    assert!(out.contains("compile_error"), "{out}");
    assert!(out.contains("`&str` borrows; use `String`"), "{out}");
    assert!(out.ends_with(&item.to_string()), "{out}");
}

#[test]
fn option_and_item_errors_are_reported_together() {
    let out = expand(
        quote!(bogus),
        quote!(
            fn f() {}
        ),
    )
    .to_string();
    assert_eq!(out.matches("compile_error").count(), 2, "{out}");
}
