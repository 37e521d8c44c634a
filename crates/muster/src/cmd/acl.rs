//! `muster acl`: bootstrap, create, list and delete tokens.

use super::*;

pub(crate) async fn acl(command: AclCommand) -> Result<(), Failure> {
    let print_created = |server: &Server, created: &muster_api::acl::CreatedToken| {
        if server.json {
            out(&json(created));
        } else {
            out(&format!(
                "token {} created; its secret (shown only now):\n{}\n",
                created.token.name, created.secret
            ));
        }
    };
    match command {
        AclCommand::Bootstrap { server } => {
            let created = client(&server)?.acl_bootstrap().await.map_err(from_client)?;
            print_created(&server, &created);
        }
        AclCommand::Create { server, name, rules, description } => {
            let request = muster_api::acl::CreateTokenRequest { name, rules, description };
            let created = client(&server)?.create_token(&request).await.map_err(from_client)?;
            print_created(&server, &created);
        }
        AclCommand::List { server } => {
            let list = client(&server)?.tokens().await.map_err(from_client)?;
            if server.json {
                out(&json(&list));
            } else {
                let rows: Vec<Vec<String>> = list
                    .tokens
                    .iter()
                    .map(|t| {
                        let rules: Vec<String> = t.rules.iter().map(ToString::to_string).collect();
                        let origin = if t.declared { "config" } else { "store" };
                        vec![t.name.clone(), rules.join("; "), origin.to_owned()]
                    })
                    .collect();
                out(&table(&["NAME", "RULES", "FROM"], &rows));
            }
        }
        AclCommand::Revoke { server, name } => {
            if !client(&server)?.revoke_token(&name).await.map_err(from_client)? {
                return Err(Failure::error(format!("no token is named {name}")));
            }
            if server.json {
                out(&(serde_json::json!({"revoked": name}).to_string() + "\n"));
            } else {
                out(&format!("token {name} revoked\n"));
            }
        }
        AclCommand::Whoami { server } => {
            let me = client(&server)?.whoami().await.map_err(from_client)?;
            if server.json {
                out(&json(&me));
            } else {
                let who = me.name.as_deref().unwrap_or("anonymous");
                let rules: Vec<String> = me.rules.iter().map(ToString::to_string).collect();
                let acl = if me.acl { "" } else { " (access control is off)" };
                out(&format!(
                    "{who}{acl}: {}\n",
                    if rules.is_empty() { "nothing".into() } else { rules.join("; ") }
                ));
            }
        }
    }
    Ok(())
}
