//! Parsing, checking and expansion of `#[task]`.
//!
//! Every check collects its errors instead of stopping at the first, so that
//! the user sees all the problems of a signature in one build.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Item, ItemFn, LitStr, Pat, PathArguments, ReturnType,
    Signature, Type,
};

/// serde implements its traits for tuples of at most this many elements, and
/// several arguments travel as one tuple.
const MAX_ARGS: usize = 16;

/// Expands `#[task(attr)] item`. On error the compile errors are emitted with
/// the item unchanged, so that its body is still checked and its name still
/// resolves: the user sees the macro's errors rather than a cascade.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(attr, item.clone()) {
        Ok(tokens) => tokens,
        Err(error) => {
            let error = error.into_compile_error();
            quote! { #error #item }
        }
    }
}

fn try_expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    // Check the attribute and the whole item before giving up, to report all.
    let mut errors = Errors::default();
    let options = errors.take(parse_options(attr));
    let func = errors.take(parse_item(item));
    let arg_types = func
        .as_ref()
        .and_then(|func| errors.take(check_signature(&func.sig)));
    errors.finish()?;
    match (options, &func, arg_types) {
        (Some(options), Some(func), Some(arg_types)) => Ok(generate(&options, func, &arg_types)),
        // Unreachable: every `None` above recorded an error.
        _ => Err(syn::Error::new(
            Span::call_site(),
            "invalid `#[multiloop::task]`",
        )),
    }
}

/// The attribute's options.
#[derive(Default)]
pub(crate) struct Options {
    /// `name = "..."`: overrides the task's `NAME`.
    pub(crate) name: Option<LitStr>,
}

/// Parses the attribute's arguments: nothing, or `name = "..."`.
pub(crate) fn parse_options(attr: TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if options.name.is_some() {
                return Err(meta.error("duplicate `name` option"));
            }
            let name: LitStr = meta.value()?.parse()?;
            if name.value().trim().is_empty() {
                return Err(syn::Error::new_spanned(
                    &name,
                    "the task name cannot be empty",
                ));
            }
            options.name = Some(name);
            Ok(())
        } else {
            Err(meta.error("unknown `multiloop::task` option; the only one is `name = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(options)
}

/// Parses the item the attribute is on, which must be a function.
pub(crate) fn parse_item(item: TokenStream) -> syn::Result<ItemFn> {
    match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(func)) => Ok(func),
        // Not an item at all, or another kind of item: point at all of it.
        _ => Err(syn::Error::new_spanned(
            item,
            "`#[multiloop::task]` applies to an `async fn`",
        )),
    }
}

/// Checks that the signature can be a task, and returns the argument types.
pub(crate) fn check_signature(sig: &Signature) -> syn::Result<Vec<&Type>> {
    let mut errors = Errors::default();
    if let Some(token) = &sig.constness {
        errors.push(token, "multiloop tasks cannot be `const fn`");
    }
    if sig.asyncness.is_none() {
        errors.push(sig.fn_token, "multiloop tasks must be `async fn`");
    }
    if let Some(token) = &sig.unsafety {
        errors.push(token, "multiloop tasks cannot be `unsafe fn`");
    }
    if let Some(abi) = &sig.abi {
        errors.push(abi, "multiloop tasks cannot be `extern` functions");
    }
    if !sig.generics.params.is_empty() {
        errors.push(
            &sig.generics,
            "multiloop tasks cannot be generic: a worker finds a task by its name, \
             so its types must be concrete",
        );
    } else if let Some(clause) = &sig.generics.where_clause {
        errors.push(clause, "multiloop tasks cannot have a `where` clause");
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(variadic, "multiloop tasks cannot be variadic");
    }

    let mut types = Vec::with_capacity(sig.inputs.len());
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(
                receiver,
                "multiloop tasks cannot take `self`: write a free `async fn`",
            ),
            FnArg::Typed(arg) => {
                check_pattern(&arg.pat, &mut errors);
                check_owned(&arg.ty, Role::Argument, &mut errors);
                types.push(&*arg.ty);
            }
        }
    }
    if types.len() > MAX_ARGS {
        errors.push(
            &sig.inputs,
            format!("multiloop tasks take at most {MAX_ARGS} arguments; group them in a struct"),
        );
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        check_owned(ty, Role::Return, &mut errors);
    }
    errors.finish()?;
    Ok(types)
}

/// Accepts `x`, `mut x` and `_`.
fn check_pattern(pat: &Pat, errors: &mut Errors) {
    match pat {
        Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none() => {}
        Pat::Wild(_) => {}
        _ => errors.push(
            pat,
            "multiloop task arguments must be plain names (`x: T` or `mut x: T`); \
             destructure inside the body",
        ),
    }
}

/// Where a type appears, for the wording of errors.
#[derive(Clone, Copy)]
enum Role {
    Argument,
    Return,
}

/// Refuses references, `impl Trait` and non-`'static` lifetimes anywhere in
/// `ty`: task values are serialized across a process boundary.
fn check_owned(ty: &Type, role: Role, errors: &mut Errors) {
    struct Owned<'e> {
        role: Role,
        errors: &'e mut Errors,
    }

    impl<'ast> Visit<'ast> for Owned<'_> {
        fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
            let suggestion = owned_suggestion(&reference.elem)
                .map_or_else(|| "an owned type".to_owned(), |s| format!("`{s}`"));
            let message = format!(
                "{}: `{}` borrows; use {suggestion}",
                match self.role {
                    Role::Argument => "multiloop tasks take owned arguments",
                    Role::Return => "multiloop tasks return owned values",
                },
                pretty(reference),
            );
            self.errors.push(reference, message);
        }

        fn visit_type_impl_trait(&mut self, impl_trait: &'ast syn::TypeImplTrait) {
            let message = match self.role {
                Role::Argument => {
                    "multiloop tasks cannot take `impl Trait` arguments: \
                     arguments are sent to a worker, so name a concrete type"
                }
                Role::Return => {
                    "multiloop tasks cannot return `impl Trait`: \
                     the value is sent back from a worker, so name a concrete type"
                }
            };
            self.errors.push(impl_trait, message);
        }

        fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
            if lifetime.ident != "static" {
                let message = format!(
                    "{}: the lifetime `{lifetime}` borrows; use an owned type",
                    match self.role {
                        Role::Argument => "multiloop tasks take owned arguments",
                        Role::Return => "multiloop tasks return owned values",
                    },
                );
                self.errors.push(lifetime, message);
            }
        }

        // Function pointers and trait objects cannot be serialized whatever
        // their parts; the serde assertion says so, not a message about
        // some `&` inside `fn(&str)`.
        fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}
        fn visit_type_trait_object(&mut self, _: &'ast syn::TypeTraitObject) {}
    }

    Owned { role, errors }.visit_type(ty);
}

/// The owned type to suggest instead of `&elem`, if there is an obvious one.
fn owned_suggestion(elem: &Type) -> Option<String> {
    match strip(elem) {
        Type::Slice(slice) => Some(format!("Vec<{}>", pretty(&slice.elem))),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            let owned = match last.ident.to_string().as_str() {
                "str" if path.path.segments.len() == 1 => "String",
                "Path" => "PathBuf",
                "OsStr" => "OsString",
                "CStr" => "CString",
                _ => return Some(pretty(elem)),
            };
            Some(owned.to_owned())
        }
        Type::Array(_) | Type::Tuple(_) => Some(pretty(elem)),
        _ => None,
    }
}

/// What a task returns, as its `Task` impl sees it.
pub(crate) enum Returns<'a> {
    /// No return type: `Output = ()`, `Error = NoError`.
    Unit,
    /// Any type but a two-argument `Result`: `Output` is it, `Error = NoError`.
    Value(&'a Type),
    /// `Result<T, E>`: `Output = T`, `Error = E`.
    Result {
        /// `T`.
        ok: &'a Type,
        /// `E`.
        err: &'a Type,
    },
}

/// Classifies a return type: a `Result` is a path whose last segment is
/// `Result` with exactly two type arguments.
pub(crate) fn classify_return(output: &ReturnType) -> Returns<'_> {
    let ty = match output {
        ReturnType::Default => return Returns::Unit,
        ReturnType::Type(_, ty) => &**ty,
    };
    result_arguments(ty).map_or(Returns::Value(ty), |(ok, err)| Returns::Result { ok, err })
}

/// `(T, E)` if `ty` is `...::Result<T, E>`.
fn result_arguments(ty: &Type) -> Option<(&Type, &Type)> {
    let Type::Path(path) = strip(ty) else {
        return None;
    };
    let last = path.path.segments.last()?;
    if path.qself.is_some() || last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return None;
    };
    match (
        generic.args.len(),
        generic.args.first(),
        generic.args.last(),
    ) {
        (2, Some(GenericArgument::Type(ok)), Some(GenericArgument::Type(err))) => Some((ok, err)),
        _ => None,
    }
}

/// Looks through parentheses and the invisible groups of `macro_rules!`.
fn strip(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// Generates the struct, its `run`, its `Task` impl, its registration and
/// the assertions that put type errors at the user's types.
fn generate(options: &Options, func: &ItemFn, arg_types: &[&Type]) -> TokenStream {
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let block = &func.block;

    // Docs describe the struct, the task's public face; `cfg`s must apply to
    // every generated item; every other attribute stays on the function.
    let (docs, rest): (Vec<&Attribute>, Vec<&Attribute>) = func
        .attrs
        .iter()
        .partition(|attr| attr.path().is_ident("doc"));
    let (cfgs, fn_attrs): (Vec<&Attribute>, Vec<&Attribute>) = rest
        .into_iter()
        .partition(|attr| attr.path().is_ident("cfg"));

    let mut run_sig = func.sig.clone();
    run_sig.ident = Ident::new("run", ident.span());
    let run_doc = format!(
        "Runs the task in this process, without a pool: this is the `async fn {}` \
         that `#[multiloop::task]` was written on.",
        ident.unraw(),
    );

    let name = match &options.name {
        Some(name) => name.to_token_stream(),
        None => {
            let fn_name = ident.unraw().to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };

    let args = Ident::new("args", Span::mixed_site());
    let bindings: Vec<Ident> = (0..arg_types.len())
        .map(|i| format_ident!("arg{}", i, span = Span::mixed_site()))
        .collect();
    let (args_type, unpack) = match (arg_types, bindings.as_slice()) {
        ([], _) => (quote!(()), quote!(let () = #args;)),
        ([ty], [binding]) => (quote!(#ty), quote!(let #binding = #args;)),
        // The tuple gets the span of the argument list, so that rustc reports
        // a bound the tuple misses there rather than at the attribute.
        _ => (
            quote_spanned!(func.sig.paren_token.span.join()=> (#(#arg_types),*)),
            quote!(let (#(#bindings),*) = #args;),
        ),
    };

    let serde = quote!(::multiloop::__private::serde);
    let value_bounds =
        quote!(#serde::Serialize + #serde::de::DeserializeOwned + ::core::marker::Send + 'static);
    let mut assertions: Vec<TokenStream> = arg_types
        .iter()
        .map(|ty| assertion(ty, "assert_task_argument", &value_bounds))
        .collect();

    let returns = classify_return(&func.sig.output);
    let (output, error, call) = match returns {
        Returns::Result { ok, err } => {
            assertions.push(assertion(ok, "assert_task_output", &value_bounds));
            let error_bounds = quote!(
                #serde::Serialize + #serde::de::DeserializeOwned
                    + ::core::fmt::Debug + ::core::marker::Send + ::core::marker::Sync + 'static
            );
            assertions.push(assertion(err, "assert_task_error", &error_bounds));
            (
                quote!(#ok),
                quote!(#err),
                quote!(#ident::run(#(#bindings),*)),
            )
        }
        Returns::Value(_) | Returns::Unit => {
            let output = match returns {
                Returns::Value(ty) => {
                    assertions.push(assertion(ty, "assert_task_output", &value_bounds));
                    quote!(#ty)
                }
                _ => quote!(()),
            };
            let call = quote! {
                async move {
                    ::core::result::Result::Ok::<_, ::multiloop::NoError>(
                        #ident::run(#(#bindings),*).await
                    )
                }
            };
            (output, quote!(::multiloop::NoError), call)
        }
    };

    // `cfg`s on each assertion, too (quote cannot nest the repetition).
    let assertions = assertions
        .iter()
        .map(|assertion| quote!(#(#cfgs)* #assertion));

    quote! {
        #(#docs)*
        #(#cfgs)*
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::fmt::Debug,
            ::core::default::Default,
            ::core::cmp::PartialEq,
            ::core::cmp::Eq,
            ::core::hash::Hash,
        )]
        #vis struct #ident;

        #(#cfgs)*
        impl #ident {
            #[doc = #run_doc]
            #(#fn_attrs)*
            #vis #run_sig #block
        }

        #(#cfgs)*
        impl ::multiloop::Task for #ident {
            const NAME: &'static str = #name;
            type Args = #args_type;
            type Output = #output;
            type Error = #error;

            fn call(
                self,
                #args: Self::Args,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<Self::Output, Self::Error>,
            > + 'static {
                #unpack
                #call
            }
        }

        #(#cfgs)*
        const _: () = {
            #[::multiloop::__private::linkme::distributed_slice(::multiloop::__private::TASKS)]
            #[linkme(crate = ::multiloop::__private::linkme)]
            static ENTRY: ::multiloop::__private::TaskEntry =
                ::multiloop::__private::TaskEntry::new::<#ident>();
        };

        #(#assertions)*
    }
}

/// A compile-time check that `ty` satisfies `bounds`, spanned at `ty` so that
/// rustc reports an unsatisfied bound at the user's type rather than at the
/// attribute.
fn assertion(ty: &Type, helper: &str, bounds: &TokenStream) -> TokenStream {
    let helper = Ident::new(helper, ty.span());
    quote_spanned! {ty.span()=>
        const _: fn() = || {
            fn #helper<T: #bounds>() {}
            #helper::<#ty>();
        };
    }
}

/// Renders tokens the way they are usually written (`&'a str`, `Vec<u8>`,
/// `[u8; 4]`), for error messages.
fn pretty(tokens: &impl ToTokens) -> String {
    fn ends_in_word(out: &str) -> bool {
        out.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '"')
    }

    fn write(stream: TokenStream, out: &mut String) {
        for tree in stream {
            match tree {
                TokenTree::Ident(_) | TokenTree::Literal(_) => {
                    if ends_in_word(out) {
                        out.push(' ');
                    }
                    out.push_str(&tree.to_string());
                }
                TokenTree::Punct(punct) => match punct.as_char() {
                    c @ (',' | ';') => {
                        out.push(c);
                        out.push(' ');
                    }
                    c @ ('+' | '=') => {
                        out.push(' ');
                        out.push(c);
                        out.push(' ');
                    }
                    '>' if out.ends_with('-') => out.push_str("> "),
                    '-' => out.push_str(" -"),
                    c => out.push(c),
                },
                TokenTree::Group(group) => {
                    let (open, close) = match group.delimiter() {
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Bracket => ("[", "]"),
                        Delimiter::Brace => ("{", "}"),
                        Delimiter::None => ("", ""),
                    };
                    // `&mut [u8]`, `dyn (Trait)`, but `Fn(u8)`, `fn(u8)`.
                    let last_word = out
                        .rsplit(|c: char| !c.is_alphanumeric() && c != '_')
                        .next();
                    let space = match group.delimiter() {
                        Delimiter::Bracket => ends_in_word(out),
                        Delimiter::Parenthesis => {
                            matches!(last_word, Some("mut" | "dyn" | "impl" | "const"))
                        }
                        _ => false,
                    };
                    if space {
                        out.push(' ');
                    }
                    out.push_str(open);
                    write(group.stream(), out);
                    if out.ends_with(' ') {
                        out.pop();
                    }
                    out.push_str(close);
                }
            }
        }
    }

    let mut out = String::new();
    write(tokens.to_token_stream(), &mut out);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Errors collected while checking, reported together.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.add(syn::Error::new_spanned(tokens, message));
    }

    /// The value of `result`, or `None` with its error recorded.
    fn take<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.add(error)).ok()
    }

    fn add(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
