//! `#[service(name = "calculator", version = "1.0.0")]` on an `impl` block: every `pub` or
//! `pub(crate)` fn (async or not) becomes a method of a Netron service, its arguments and result carried through serde;
//! the block gains `into_service(self) -> Arc<Service>` (the definition's `meta` generated from the
//! signatures; `into_builder` to add properties or stream methods first) and a typed client
//! `<Type>Client` with the same methods over an `Interface`.
//!
//! Methods take `&self` and owned arguments; they return a value or `Result<T, JsError>` (the
//! error reaches the caller as a Netron error).

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::{FnArg, ImplItem, ItemImpl, LitStr, Pat, ReturnType, Type, parse_macro_input};

/// See the crate documentation.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name = None;
    let mut version = LitStr::new("", Span::call_site());
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse::<LitStr>()?);
            Ok(())
        } else if meta.path.is_ident("version") {
            version = meta.value()?.parse::<LitStr>()?;
            Ok(())
        } else {
            Err(meta.error("expected `name = \"...\"` or `version = \"...\"`"))
        }
    });
    if let Err(error) = parser.parse(attr) {
        return error.to_compile_error().into();
    }
    let block = parse_macro_input!(item as ItemImpl);
    let Some(name) = name else {
        return syn::Error::new(Span::call_site(), "#[service] needs `name = \"...\"`")
            .to_compile_error()
            .into();
    };
    match expand(&name, &version, &block) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// The JavaScript type name Netron's decorators would write for a Rust type.
fn js_type(ty: &Type) -> String {
    let text = quote!(#ty).to_string().replace(' ', "");
    let last = text.rsplit("::").next().unwrap_or(&text).to_owned();
    let base = last.split('<').next().unwrap_or(&last);
    match base {
        "f32" | "f64" | "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "Number"
        }
        "String" => "String",
        "bool" => "Boolean",
        "Vec" => "Array",
        "()" => "void",
        _ => "Object",
    }
    .to_owned()
}

/// `T` of `Result<T, _>`, if `ty` is a `Result`.
fn ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last()?;
    if segment.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &segment.arguments else { return None };
    match args.args.first()? {
        syn::GenericArgument::Type(ok) => Some(ok.clone()),
        _ => None,
    }
}

fn expand(name: &LitStr, version: &LitStr, block: &ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    let self_ty = &block.self_ty;
    let Type::Path(type_path) = &**self_ty else {
        return Err(syn::Error::new_spanned(self_ty, "#[service] goes on an impl block of a named type"));
    };
    let type_ident =
        &type_path.path.segments.last().ok_or_else(|| syn::Error::new_spanned(self_ty, "a type"))?.ident;
    let client_ident = format_ident!("{}Client", type_ident);
    let mut registrations = Vec::new();
    let mut client_methods = Vec::new();
    for item in &block.items {
        let ImplItem::Fn(method) = item else { continue };
        if matches!(method.vis, syn::Visibility::Inherited) {
            continue;
        }
        let sig = &method.sig;
        let ident = &sig.ident;
        let method_name = ident.to_string();
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(receiver))
                if receiver.reference.is_some() && receiver.mutability.is_none() => {}
            _ => return Err(syn::Error::new_spanned(sig, "service methods take `&self` first")),
        }
        let mut names = Vec::new();
        let mut types = Vec::new();
        for input in inputs {
            let FnArg::Typed(typed) = input else { continue };
            let Pat::Ident(pat) = &*typed.pat else {
                return Err(syn::Error::new_spanned(&typed.pat, "arguments must be plain names"));
            };
            if matches!(&*typed.ty, Type::Reference(_)) {
                return Err(syn::Error::new_spanned(&typed.ty, "arguments must be owned (String, not &str)"));
            }
            names.push(pat.ident.clone());
            types.push((*typed.ty).clone());
        }
        let js_arguments: Vec<String> = types.iter().map(js_type).collect();
        let output: Type = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => (**ty).clone(),
        };
        let fallible = ok_type(&output);
        let value_type = fallible.clone().unwrap_or_else(|| output.clone());
        let js_return = if sig.asyncness.is_some() { "Promise".to_owned() } else { js_type(&value_type) };
        let call = if sig.asyncness.is_some() {
            quote!(this.#ident(#(#names),*).await)
        } else {
            quote!(this.#ident(#(#names),*))
        };
        let result = if fallible.is_some() {
            call
        } else {
            quote!(::std::result::Result::Ok::<_, ::muster_peer::wire::JsError>(#call))
        };
        let pattern = match names.len() {
            0 => quote!((): ()),
            1 => {
                let (n, t) = (&names[0], &types[0]);
                quote!(#n: #t)
            }
            _ => quote!((#(#names),*): (#(#types),*)),
        };
        registrations.push(quote! {
            let builder = {
                let this = ::std::sync::Arc::clone(&this);
                builder.method(#method_name, &[#(#js_arguments),*], #js_return, move |#pattern| {
                    let this = ::std::sync::Arc::clone(&this);
                    async move { #result }
                })
            };
        });
        let args = match names.len() {
            0 => quote!(()),
            1 => {
                let n = &names[0];
                quote!(#n)
            }
            _ => quote!((#(#names),*)),
        };
        let params = names.iter().zip(&types).map(|(n, t)| quote!(#n: #t));
        client_methods.push(quote! {
            /// Calls the remote method of the same name.
            pub async fn #ident(&self, #(#params),*) -> ::std::result::Result<#value_type, ::muster_peer::PeerError> {
                self.0.call_as(#method_name, #args).await
            }
        });
    }
    let client_doc = format!("A typed client of the remote `{}` service.", name.value());
    Ok(quote! {
        #block

        #[allow(unreachable_pub)]
        impl #self_ty {
            /// The service `name@version` with every public method of this block.
            pub fn into_service(self) -> ::std::sync::Arc<::muster_peer::Service> {
                self.into_builder().build()
            }

            /// The declaration of [`Self::into_service`], to add properties or stream methods to.
            pub fn into_builder(self) -> ::muster_peer::ServiceBuilder {
                let this = ::std::sync::Arc::new(self);
                let builder = ::muster_peer::ServiceBuilder::new(#name, #version)
                    .expect("the #[service] name and version are valid");
                #(#registrations)*
                builder
            }

            /// The typed client of this service over an interface from `query_interface`.
            pub fn client(interface: ::muster_peer::Interface) -> #client_ident {
                #client_ident(interface)
            }
        }

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #[allow(unreachable_pub)]
        pub struct #client_ident(pub ::muster_peer::Interface);

        #[allow(unreachable_pub)]
        impl #client_ident {
            #(#client_methods)*
        }
    })
}
