//! The agent's Neutron API over HTTP: the real `floatip agent` binary in the gateway
//! namespace of a real lab, a real SQLite state and the real pinned maps, driven by an HTTP
//! client on a thread inside the gateway namespace. Every route, the filters, the error
//! bodies and status codes, the roles, and that a failed request changes nothing (neither the
//! database, seen through the API, nor the maps, seen through `floatip nat list`).
//!
//! Needs root and a built `floatip`; run with `cargo xtask test -p tests -- --test api`.

use std::path::Path;

use serde_json::{Value, json};
use tests::{
    agent::{self, Client, Reply, in_netns},
    netns::{self, FIP1, INST1_IP, INST2_IP, Lab},
};

const NETPROBE: &str = env!("CARGO_BIN_EXE_netprobe");

const ADMIN: (&str, &str) = ("root", "admin-secret");
const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");

#[track_caller]
fn expect(r: &Reply, status: u16, what: &str) {
    assert_eq!(
        r.status, status,
        "{what}: expected {status}, got {}: {}",
        r.status, r.text
    );
    if status >= 400 {
        assert!(
            r.error_type().is_some()
                && r.body["NeutronError"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
            "{what}: not a Neutron error body: {}",
            r.text
        );
    }
}

/// The observable state: every floating IP and port (as the admin sees them) and the maps.
fn snapshot(c: &Client, lab: &Lab) -> (Value, Value, Vec<(String, String)>) {
    let fips = c.call("GET", "/v2.0/floatingips", ADMIN, None).body;
    let ports = c.call("GET", "/v2.0/ports", ADMIN, None).body;
    let pairs = if lab.bpffs.exists() {
        lab.nat_pairs()
    } else {
        Vec::new()
    };
    (fips, ports, pairs)
}

/// Runs a request that must fail with `status`, and checks it changed nothing.
#[track_caller]
fn refused(c: &Client, lab: &Lab, status: u16, what: &str, req: impl FnOnce() -> Reply) -> Reply {
    let before = snapshot(c, lab);
    let r = req();
    expect(&r, status, what);
    assert_eq!(
        snapshot(c, lab),
        before,
        "{what}: a failed request changed the state"
    );
    r
}

fn ids(v: &Value, collection: &str) -> Vec<String> {
    v[collection]
        .as_array()
        .unwrap_or_else(|| panic!("no {collection} in {v}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn api() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = Lab::build(
        netns::mode_from_env(),
        &netns::floatip_binary(),
        Path::new(NETPROBE),
    )
    .unwrap_or_else(|e| panic!("cannot build the lab: {e:#}"));
    for (user, project, role) in [
        (ADMIN, "admin", "admin"),
        (ALICE, "demo", "member"),
        (BOB, "other", "member"),
    ] {
        agent::user_create(&lab, user.0, project, role, user.1).unwrap();
    }
    // A second user of the same name is refused, and nothing is printed as created.
    let dup = agent::user_create(&lab, "alice", "x", "member", "pw");
    assert!(dup.is_err_and(|e| format!("{e:#}").contains("user alice already exists")));
    lab.pool_create("public", "203.0.113.10-203.0.113.20");
    let config = lab.workdir.join("agent.toml");
    std::fs::write(
        &config,
        "max_body_bytes = 4096\n[auth]\nmax_failures = 5\nlockout_seconds = 3600\n",
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let _agent = agent::start(&lab, &["--config", &config]).unwrap();

    in_netns(&lab.gw, || {
        let c = Client::new();
        detached(&c, &lab);
        let out = lab.attach();
        assert!(out.success(), "attach: {out}");
        let net = networks(&c);
        ports_and_floating_ips(&c, &lab, &net);
        tags(&c, &lab, &net);
        bad_input(&c, &lab, &net);
        quotas(&c, &lab, &net);
        prometheus(&c, &lab);
        repairs_and_drift(&c, &lab);
        flood(&c, &lab, &net);
        login_lockout(&c);
    });
}

/// Before `attach`: what does not need the maps works, what does is a 503.
fn detached(c: &Client, lab: &Lab) {
    let r = c.raw("GET", "/", None, None).unwrap();
    expect(&r, 200, "version document without credentials");
    assert_eq!(r.body["versions"][0]["id"], "v2.0");
    assert!(
        r.body["versions"][0]["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with("/v2.0/")
    );

    let r = c.raw("GET", "/v2.0/networks", None, None).unwrap();
    expect(&r, 401, "no credentials");
    assert_eq!(
        r.www_authenticate.as_deref(),
        Some("Basic realm=\"floatip\"")
    );
    expect(
        &c.call("GET", "/v2.0/networks", ("alice", "wrong"), None),
        401,
        "wrong password",
    );
    expect(
        &c.call("GET", "/v2.0/networks", ("nobody", "x"), None),
        401,
        "unknown user",
    );

    let r = c.call("GET", "/v2.0/", ALICE, None);
    expect(&r, 200, "resources");
    let collections: Vec<&str> = r.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["collection"].as_str().unwrap())
        .collect();
    assert_eq!(
        collections,
        ["networks", "subnets", "ports", "floatingips", "quotas"]
    );
    let r = c.call("GET", "/v2.0/extensions", ALICE, None);
    expect(&r, 200, "extensions");
    let aliases: Vec<&str> = r.body["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["alias"].as_str().unwrap())
        .collect();
    assert!(
        aliases.contains(&"external-net")
            && aliases.contains(&"quotas")
            && aliases.contains(&"standard-attr-tag"),
        "{aliases:?}"
    );
    expect(
        &c.call("GET", "/v2.0/extensions/external-net", ALICE, None),
        200,
        "one extension",
    );
    expect(
        &c.call("GET", "/v2.0/extensions/dvr", ALICE, None),
        404,
        "unknown extension",
    );

    // Detached: only the pool is a network; allocating works, associating needs the maps.
    let nets = c.call("GET", "/v2.0/networks", ALICE, None);
    assert_eq!(
        nets.body["networks"].as_array().unwrap().len(),
        1,
        "{}",
        nets.text
    );
    let public = nets.body["networks"][0]["id"].as_str().unwrap().to_owned();
    let r = c.call(
        "POST",
        "/v2.0/floatingips",
        ALICE,
        Some(&json!({"floatingip": {"floating_network_id": public}})),
    );
    expect(&r, 201, "allocate while detached");
    assert_eq!(r.body["floatingip"]["status"], "DOWN");
    let fip = r.body["floatingip"]["id"].as_str().unwrap().to_owned();
    // The association needs a port, which needs an internal network, which needs the data
    // plane: the port is not found, and a port-less update of the description still works.
    refused(c, lab, 404, "associate with a missing port", || {
        c.call(
            "PUT",
            &format!("/v2.0/floatingips/{fip}"),
            ALICE,
            Some(&json!({"floatingip": {"port_id": "nope"}})),
        )
    });
    // Disassociating works on the database alone while detached (the next attach applies
    // it); for an address that has no association it changes nothing.
    let r = c.call(
        "PUT",
        &format!("/v2.0/floatingips/{fip}"),
        ALICE,
        Some(&json!({"floatingip": {"port_id": null}})),
    );
    expect(&r, 200, "disassociate while detached");
    assert_eq!(r.body["floatingip"]["status"], "DOWN", "{}", r.text);
    expect(
        &c.call("DELETE", &format!("/v2.0/floatingips/{fip}"), ALICE, None),
        204,
        "release while detached",
    );
}

/// Neutron's tag extension on floating IPs: the `tags` sub-resource (replace, clear, check,
/// add and remove one), the four list filters, scoping, and refusals that change nothing.
fn tags(c: &Client, lab: &Lab, net: &Nets) {
    let create = |user| {
        let body = json!({"floatingip": {"floating_network_id": net.public}});
        let r = c.call("POST", "/v2.0/floatingips", user, Some(&body));
        expect(&r, 201, "allocate for tags");
        r.body["floatingip"]["id"].as_str().unwrap().to_owned()
    };
    let (a, b, theirs) = (create(ALICE), create(ALICE), create(BOB));
    let url = |id: &str, rest: &str| format!("/v2.0/floatingips/{id}/tags{rest}");
    let tags_of = |id: &str| {
        let r = c.call("GET", &url(id, ""), ALICE, None);
        expect(&r, 200, "the tags");
        r.body["tags"].clone()
    };

    let r = c.call(
        "PUT",
        &url(&a, ""),
        ALICE,
        Some(&json!({"tags": ["web", "blue"]})),
    );
    expect(&r, 200, "replace the tags");
    assert_eq!(r.body, json!({"tags": ["blue", "web"]}));
    for tag in ["web", "web", "db"] {
        let r = c.call("PUT", &url(&b, &format!("/{tag}")), ALICE, None);
        expect(&r, 201, "add a tag (again: no error)");
    }
    assert_eq!(tags_of(&b), json!(["db", "web"]));
    expect(
        &c.call("GET", &url(&b, "/db"), ALICE, None),
        204,
        "a tag it has",
    );
    let r = c.call("GET", &url(&b, "/blue"), ALICE, None);
    expect(&r, 404, "a tag it does not have");
    assert_eq!(r.error_type(), Some("TagNotFound"));
    let shown = c.call("GET", &format!("/v2.0/floatingips/{a}"), ALICE, None);
    assert_eq!(shown.body["floatingip"]["tags"], json!(["blue", "web"]));

    // The filters (a: blue, web; b: db, web), over alice's other addresses too.
    let listed = |q: &str| {
        let r = c.call("GET", &format!("/v2.0/floatingips?{q}"), ALICE, None);
        expect(&r, 200, q);
        let found = ids(&r.body, "floatingips");
        assert!(!found.contains(&theirs), "{q}: another project's");
        [&a, &b]
            .into_iter()
            .filter(|id| found.contains(id))
            .map(|id| if *id == a { "a" } else { "b" })
            .collect::<Vec<_>>()
    };
    for (q, want) in [
        ("tags=web", &["a", "b"][..]),
        ("tags=web,blue", &["a"]),
        ("tags=web&tags=blue", &["a"]),
        ("tags-any=blue,db", &["a", "b"]),
        ("tags-any=db", &["b"]),
        ("not-tags=web,blue", &["b"]),
        ("not-tags=web", &[]),
        ("not-tags-any=blue", &["b"]),
        ("not-tags-any=blue,db", &[]),
        ("tags-any=web&not-tags=db,web", &["a"]),
        ("tags=web&not-tags-any=db&fields=id&fields=tags", &["a"]),
    ] {
        assert_eq!(listed(q), want, "{q}");
    }
    let page = c.call("GET", "/v2.0/floatingips?tags=web&limit=1", ALICE, None);
    let next = page.body["floatingips_links"][0]["href"].as_str().unwrap();
    assert!(
        next.contains("tags=web"),
        "the next page keeps the filter: {next}"
    );

    // Refusals: one Neutron error each, nothing changed (a PUT of the whole set is all or
    // nothing).
    let put = |id: &str, user, body: Value| c.call("PUT", &url(id, ""), user, Some(&body));
    let sixty_five: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    for (what, status, kind, req) in [
        (
            "a tag with a comma",
            400,
            "InvalidInput",
            Box::new(|| c.call("PUT", &url(&a, "/x%2Cy"), ALICE, None)) as Box<dyn Fn() -> Reply>,
        ),
        (
            "a tag with a blank",
            400,
            "InvalidInput",
            Box::new(|| put(&a, ALICE, json!({"tags": ["ok", "two words"]}))),
        ),
        (
            "a tag twice",
            400,
            "InvalidInput",
            Box::new(|| put(&a, ALICE, json!({"tags": ["d", "d"]}))),
        ),
        (
            "not a list",
            400,
            "HTTPBadRequest",
            Box::new(|| put(&a, ALICE, json!({"tags": "web"}))),
        ),
        (
            "65 tags",
            400,
            "InvalidInput",
            Box::new(|| put(&a, ALICE, json!({"tags": sixty_five}))),
        ),
        (
            "removing a tag it does not have",
            404,
            "TagNotFound",
            Box::new(|| c.call("DELETE", &url(&b, "/blue"), ALICE, None)),
        ),
        (
            "another project's floating IP",
            404,
            "FloatingIPNotFound",
            Box::new(|| c.call("PUT", &url(&a, "/x"), BOB, None)),
        ),
        (
            "clearing another project's",
            404,
            "FloatingIPNotFound",
            Box::new(|| c.call("DELETE", &url(&a, ""), BOB, None)),
        ),
        (
            "reading another project's",
            404,
            "FloatingIPNotFound",
            Box::new(|| c.call("GET", &url(&theirs, ""), ALICE, None)),
        ),
        (
            "replacing another project's",
            404,
            "FloatingIPNotFound",
            Box::new(|| put(&theirs, ALICE, json!({"tags": []}))),
        ),
        (
            "no such floating IP",
            404,
            "FloatingIPNotFound",
            Box::new(|| c.call("PUT", &url("nope", "/x"), ALICE, None)),
        ),
        (
            "a misspelt filter",
            400,
            "HTTPBadRequest",
            Box::new(|| c.call("GET", "/v2.0/floatingips?not-tag=x", ALICE, None)),
        ),
    ] {
        let r = refused(c, lab, status, what, req);
        assert_eq!(r.error_type(), Some(kind), "{what}: {}", r.text);
    }
    assert_eq!(tags_of(&a), json!(["blue", "web"]));

    // The admin may tag any project's; removing one tag, then all.
    expect(
        &c.call("PUT", &url(&theirs, "/audited"), ADMIN, None),
        201,
        "admin tags",
    );
    let r = c.call("GET", &format!("/v2.0/floatingips/{theirs}"), BOB, None);
    assert_eq!(r.body["floatingip"]["tags"], json!(["audited"]));
    expect(
        &c.call("DELETE", &url(&b, "/db"), ALICE, None),
        204,
        "remove a tag",
    );
    assert_eq!(tags_of(&b), json!(["web"]));
    expect(
        &c.call("DELETE", &url(&a, ""), ALICE, None),
        204,
        "remove every tag",
    );
    assert_eq!(tags_of(&a), json!([]));
    for (id, user) in [(&a, ALICE), (&b, ALICE), (&theirs, BOB)] {
        let r = c.call("DELETE", &format!("/v2.0/floatingips/{id}"), user, None);
        expect(&r, 204, "release");
    }
}

struct Nets {
    public: String,
    internal: String,
    tenant_subnet: String,
}

fn networks(c: &Client) -> Nets {
    let r = c.call("GET", "/v2.0/networks", ALICE, None);
    expect(&r, 200, "networks");
    let nets = r.body["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 2, "the pool and gw-int: {}", r.text);
    let find = |name: &str| {
        nets.iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no network {name}: {}", r.text))
    };
    let (public, internal) = (find("public"), find("gw-int"));
    assert_eq!(
        (
            public["router:external"].clone(),
            internal["router:external"].clone()
        ),
        (json!(true), json!(false))
    );

    let ext = c.call("GET", "/v2.0/networks?router:external=True", ALICE, None);
    assert_eq!(ids(&ext.body, "networks"), [public["id"].as_str().unwrap()]);
    let r = c.call(
        "GET",
        &format!(
            "/v2.0/networks/{}?fields=name&fields=id",
            internal["id"].as_str().unwrap()
        ),
        ALICE,
        None,
    );
    expect(&r, 200, "show network with fields");
    assert_eq!(
        r.body["network"],
        json!({"id": internal["id"], "name": "gw-int"})
    );
    expect(
        &c.call(
            "GET",
            "/v2.0/networks/00000000-0000-0000-0000-000000000000",
            ALICE,
            None,
        ),
        404,
        "missing network",
    );

    let r = c.call("GET", "/v2.0/subnets", ALICE, None);
    expect(&r, 200, "subnets");
    let subnets = r.body["subnets"].as_array().unwrap();
    let pool_subnet = subnets
        .iter()
        .find(|s| s["network_id"] == public["id"])
        .expect("pool subnet");
    assert_eq!(
        pool_subnet["allocation_pools"],
        json!([{"start": "203.0.113.10", "end": "203.0.113.20"}])
    );
    let tenant = subnets
        .iter()
        .find(|s| s["network_id"] == internal["id"])
        .expect("tenant subnet");
    assert_eq!(tenant["cidr"], "10.0.0.0/24");
    assert_eq!(tenant["gateway_ip"], "10.0.0.1");
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    expect(
        &c.call("GET", &format!("/v2.0/subnets/{tenant_id}"), ALICE, None),
        200,
        "show subnet",
    );
    expect(
        &c.call("GET", "/v2.0/subnets/nope", ALICE, None),
        404,
        "missing subnet",
    );
    Nets {
        public: public["id"].as_str().unwrap().to_owned(),
        internal: internal["id"].as_str().unwrap().to_owned(),
        tenant_subnet: tenant_id,
    }
}

fn port_body(net: &Nets, name: &str, ip: &str) -> Value {
    json!({"port": {"network_id": net.internal, "name": name, "fixed_ips": [{"ip_address": ip}], "admin_state_up": true}})
}

fn ports_and_floating_ips(c: &Client, lab: &Lab, net: &Nets) {
    // Ports.
    let r = c.call(
        "POST",
        "/v2.0/ports",
        ALICE,
        Some(&port_body(net, "web1", INST1_IP)),
    );
    expect(&r, 201, "create port web1");
    assert_eq!(
        r.body["port"]["fixed_ips"],
        json!([{"subnet_id": net.tenant_subnet, "ip_address": INST1_IP}])
    );
    assert_eq!(r.body["port"]["project_id"], "demo");
    let web1 = r.body["port"]["id"].as_str().unwrap().to_owned();
    let r = c.call(
        "POST",
        "/v2.0/ports",
        ALICE,
        Some(&port_body(net, "web2", INST2_IP)),
    );
    expect(&r, 201, "create port web2");
    let web2 = r.body["port"]["id"].as_str().unwrap().to_owned();
    refused(c, lab, 409, "a fixed IP already taken", || {
        c.call(
            "POST",
            "/v2.0/ports",
            ALICE,
            Some(&port_body(net, "dup", INST1_IP)),
        )
    });
    refused(c, lab, 400, "outside the subnet", || {
        c.call(
            "POST",
            "/v2.0/ports",
            ALICE,
            Some(&port_body(net, "x", "10.9.0.5")),
        )
    });
    refused(c, lab, 400, "the gateway's address", || {
        c.call(
            "POST",
            "/v2.0/ports",
            ALICE,
            Some(&port_body(net, "x", "10.0.0.1")),
        )
    });
    refused(c, lab, 400, "a port on the external network", || {
        c.call(
            "POST",
            "/v2.0/ports",
            ALICE,
            Some(&json!({"port": {"network_id": net.public}})),
        )
    });
    refused(
        c,
        lab,
        403,
        "a member creating a port for another project",
        || {
            c.call(
                "POST",
                "/v2.0/ports",
                ALICE,
                Some(&json!({"port": {"network_id": net.internal, "project_id": "other"}})),
            )
        },
    );
    // Without fixed_ips: the lowest free host address (10.0.0.1 is the gateway's).
    let r = c.call(
        "POST",
        "/v2.0/ports",
        BOB,
        Some(&json!({"port": {"network_id": net.internal, "name": "bobs"}})),
    );
    expect(&r, 201, "port with an allocated address");
    assert_eq!(r.body["port"]["fixed_ips"][0]["ip_address"], "10.0.0.2");
    let bobs = r.body["port"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ids(&c.call("GET", "/v2.0/ports", BOB, None).body, "ports"),
        [bobs.as_str()],
        "bob sees only his port"
    );
    assert_eq!(
        ids(
            &c.call("GET", "/v2.0/ports?name=web2", ALICE, None).body,
            "ports"
        ),
        [web2.as_str()]
    );
    assert_eq!(
        ids(&c.call("GET", "/v2.0/ports", ADMIN, None).body, "ports").len(),
        3
    );
    refused(c, lab, 404, "another project's port", || {
        c.call("GET", &format!("/v2.0/ports/{web1}"), BOB, None)
    });
    refused(c, lab, 404, "deleting another project's port", || {
        c.call("DELETE", &format!("/v2.0/ports/{web1}"), BOB, None)
    });
    let r = c.call(
        "PUT",
        &format!("/v2.0/ports/{bobs}"),
        BOB,
        Some(&json!({"port": {"name": "renamed", "device_id": "vm-7"}})),
    );
    expect(&r, 200, "update port");
    assert_eq!(
        (
            r.body["port"]["name"].as_str(),
            r.body["port"]["device_id"].as_str()
        ),
        (Some("renamed"), Some("vm-7"))
    );
    expect(
        &c.call("DELETE", &format!("/v2.0/ports/{bobs}"), BOB, None),
        204,
        "delete port",
    );
    expect(
        &c.call("GET", &format!("/v2.0/ports/{bobs}"), ADMIN, None),
        404,
        "deleted port",
    );

    // Floating IPs: a chosen address and the lowest free one.
    let create = |who, body: Value| {
        c.call(
            "POST",
            "/v2.0/floatingips",
            who,
            Some(&json!({"floatingip": body})),
        )
    };
    let r = create(
        ALICE,
        json!({"floating_network_id": net.public, "floating_ip_address": FIP1, "description": "web"}),
    );
    expect(&r, 201, "allocate a chosen address");
    let f1 = r.body["floatingip"].clone();
    assert_eq!(
        (
            f1["floating_ip_address"].as_str(),
            f1["status"].as_str(),
            f1["port_id"].clone()
        ),
        (Some(FIP1), Some("DOWN"), Value::Null)
    );
    let f1_id = f1["id"].as_str().unwrap().to_owned();
    let r = create(ALICE, json!({"floating_network_id": net.public}));
    expect(&r, 201, "allocate the lowest free address");
    assert_eq!(r.body["floatingip"]["floating_ip_address"], "203.0.113.11");
    let f2_id = r.body["floatingip"]["id"].as_str().unwrap().to_owned();
    let r = create(BOB, json!({"floating_network_id": net.public}));
    expect(&r, 201, "bob allocates");
    let bob_fip = r.body["floatingip"]["id"].as_str().unwrap().to_owned();
    refused(c, lab, 409, "an address already allocated", || {
        create(
            BOB,
            json!({"floating_network_id": net.public, "floating_ip_address": FIP1}),
        )
    });
    refused(c, lab, 400, "an address outside the pool", || {
        create(
            BOB,
            json!({"floating_network_id": net.public, "floating_ip_address": "203.0.113.99"}),
        )
    });
    refused(c, lab, 400, "an internal network", || {
        create(BOB, json!({"floating_network_id": net.internal}))
    });
    refused(c, lab, 404, "a missing network", || {
        create(BOB, json!({"floating_network_id": "nope"}))
    });
    refused(c, lab, 404, "bob on alice's port", || {
        create(
            BOB,
            json!({"floating_network_id": net.public, "port_id": web1}),
        )
    });
    refused(
        c,
        lab,
        403,
        "a member allocating for another project",
        || {
            create(
                BOB,
                json!({"floating_network_id": net.public, "project_id": "demo"}),
            )
        },
    );

    // Associate: ACTIVE, and the maps hold the pair.
    let put = |who, id: &str, body: Value| {
        c.call(
            "PUT",
            &format!("/v2.0/floatingips/{id}"),
            who,
            Some(&json!({"floatingip": body})),
        )
    };
    let r = put(ALICE, &f1_id, json!({"port_id": web1}));
    expect(&r, 200, "associate with web1");
    assert_eq!(
        (
            r.body["floatingip"]["status"].as_str(),
            r.body["floatingip"]["port_id"].as_str()
        ),
        (Some("ACTIVE"), Some(web1.as_str()))
    );
    assert_eq!(r.body["floatingip"]["fixed_ip_address"], INST1_IP);
    assert_eq!(lab.nat_pairs(), [(FIP1.to_owned(), INST1_IP.to_owned())]);
    refused(c, lab, 409, "a port that already has a floating IP", || {
        put(ALICE, &f2_id, json!({"port_id": web1}))
    });
    refused(c, lab, 404, "bob moving alice's floating IP", || {
        put(BOB, &f1_id, json!({"port_id": web2}))
    });
    refused(
        c,
        lab,
        404,
        "bob putting his floating IP on alice's port",
        || put(BOB, &bob_fip, json!({"port_id": web2})),
    );
    refused(c, lab, 404, "another project's floating IP", || {
        c.call("GET", &format!("/v2.0/floatingips/{f1_id}"), BOB, None)
    });
    refused(c, lab, 400, "a fixed IP the port does not have", || {
        put(
            ALICE,
            &f2_id,
            json!({"port_id": web2, "fixed_ip_address": INST1_IP}),
        )
    });
    refused(
        c,
        lab,
        400,
        "a description with control characters, with a valid move",
        || {
            put(
                ALICE,
                &f1_id,
                json!({"port_id": web2, "description": "a\u{7}b"}),
            )
        },
    );

    // Move, then list with filters, then disassociate.
    let r = put(
        ALICE,
        &f1_id,
        json!({"port_id": web2, "description": "moved"}),
    );
    expect(&r, 200, "move to web2");
    assert_eq!(
        (
            r.body["floatingip"]["fixed_ip_address"].as_str(),
            r.body["floatingip"]["description"].as_str()
        ),
        (Some(INST2_IP), Some("moved"))
    );
    assert_eq!(lab.nat_pairs(), [(FIP1.to_owned(), INST2_IP.to_owned())]);

    let list = |who, q: &str| {
        let r = c.call("GET", &format!("/v2.0/floatingips{q}"), who, None);
        expect(&r, 200, q);
        r.body
    };
    assert_eq!(
        ids(&list(ALICE, ""), "floatingips"),
        [f1_id.clone(), f2_id.clone()]
    );
    assert_eq!(ids(&list(BOB, ""), "floatingips"), [bob_fip.as_str()]);
    assert_eq!(ids(&list(ADMIN, ""), "floatingips").len(), 3);
    assert_eq!(
        ids(&list(ADMIN, "?project_id=other"), "floatingips"),
        [bob_fip.as_str()]
    );
    assert_eq!(
        ids(&list(ALICE, "?project_id=other"), "floatingips"),
        Vec::<String>::new(),
        "a member's filter cannot widen its view"
    );
    assert_eq!(
        ids(&list(ALICE, "?status=ACTIVE"), "floatingips"),
        [f1_id.as_str()]
    );
    assert_eq!(
        ids(&list(ALICE, "?status=DOWN"), "floatingips"),
        [f2_id.as_str()]
    );
    assert_eq!(
        ids(&list(ALICE, &format!("?port_id={web2}")), "floatingips"),
        [f1_id.as_str()]
    );
    assert_eq!(
        ids(
            &list(ALICE, &format!("?floating_ip_address={FIP1}")),
            "floatingips"
        ),
        [f1_id.as_str()]
    );
    assert_eq!(
        ids(
            &list(ALICE, &format!("?fixed_ip_address={INST2_IP}")),
            "floatingips"
        ),
        [f1_id.as_str()]
    );
    assert_eq!(
        ids(&list(ALICE, "?description=moved"), "floatingips"),
        [f1_id.as_str()]
    );
    assert_eq!(
        ids(
            &list(ADMIN, &format!("?floating_network_id={}", net.public)),
            "floatingips"
        )
        .len(),
        3
    );
    assert_eq!(
        ids(&list(ADMIN, "?floating_network_id=nope"), "floatingips").len(),
        0
    );
    assert_eq!(
        ids(
            &list(ALICE, "?sort_key=floating_ip_address&sort_dir=desc"),
            "floatingips"
        ),
        [f2_id.clone(), f1_id.clone()]
    );
    let only = list(ALICE, "?fields=floating_ip_address&status=ACTIVE");
    assert_eq!(only["floatingips"], json!([{"floating_ip_address": FIP1}]));
    // Pages of one, following the next links.
    let mut seen = Vec::new();
    let mut next = "/v2.0/floatingips?limit=1&sort_key=floating_ip_address".to_owned();
    loop {
        let page = c.call("GET", &next, ADMIN, None);
        expect(&page, 200, &next);
        let got = ids(&page.body, "floatingips");
        assert!(got.len() <= 1, "{}", page.text);
        seen.extend(got);
        match page.body["floatingips_links"][0]["href"].as_str() {
            Some(href) => next = href.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    refused(c, lab, 404, "a marker that is not found", || {
        c.call("GET", "/v2.0/floatingips?marker=nope", ALICE, None)
    });
    refused(c, lab, 400, "an unknown filter", || {
        c.call("GET", "/v2.0/floatingips?color=red", ALICE, None)
    });
    refused(c, lab, 400, "an unknown sort key", || {
        c.call("GET", "/v2.0/floatingips?sort_key=color", ALICE, None)
    });
    refused(c, lab, 400, "a bad limit", || {
        c.call("GET", "/v2.0/floatingips?limit=lots", ALICE, None)
    });

    let r = put(ALICE, &f1_id, json!({"port_id": null}));
    expect(&r, 200, "disassociate");
    assert_eq!(
        (
            r.body["floatingip"]["status"].as_str(),
            r.body["floatingip"]["port_id"].clone()
        ),
        (Some("DOWN"), Value::Null)
    );
    assert!(lab.nat_pairs().is_empty());

    // Deleting a port disassociates its floating IP first (Neutron's behaviour).
    expect(
        &put(ALICE, &f2_id, json!({"port_id": web1})),
        200,
        "associate f2 with web1",
    );
    assert_eq!(lab.nat_pairs().len(), 1);
    expect(
        &c.call("DELETE", &format!("/v2.0/ports/{web1}"), ALICE, None),
        204,
        "delete an associated port",
    );
    assert!(lab.nat_pairs().is_empty());
    let r = c.call("GET", &format!("/v2.0/floatingips/{f2_id}"), ALICE, None);
    assert_eq!(
        (
            r.body["floatingip"]["status"].as_str(),
            r.body["floatingip"]["port_id"].clone()
        ),
        (Some("DOWN"), Value::Null)
    );

    // Allocate straight onto a port, then release an associated address.
    let r = create(
        ALICE,
        json!({"floating_network_id": net.public, "port_id": web2, "fixed_ip_address": INST2_IP}),
    );
    expect(&r, 201, "allocate onto a port");
    assert_eq!(r.body["floatingip"]["status"], "ACTIVE");
    let f3 = r.body["floatingip"]["id"].as_str().unwrap().to_owned();
    refused(c, lab, 409, "allocate onto a port that has one", || {
        create(
            ALICE,
            json!({"floating_network_id": net.public, "port_id": web2}),
        )
    });
    expect(
        &c.call("DELETE", &format!("/v2.0/floatingips/{f3}"), ALICE, None),
        204,
        "release an associated address",
    );
    assert!(lab.nat_pairs().is_empty());
    refused(c, lab, 404, "a released address", || {
        c.call("GET", &format!("/v2.0/floatingips/{f3}"), ALICE, None)
    });
    refused(c, lab, 404, "a malformed id", || {
        c.call("GET", "/v2.0/floatingips/203.0.113.10", ALICE, None)
    });
    expect(
        &c.call("DELETE", &format!("/v2.0/floatingips/{f2_id}"), ALICE, None),
        204,
        "release f2",
    );
    expect(
        &put(ALICE, &f1_id, json!({"port_id": web2})),
        200,
        "f1 on web2 for the next checks",
    );
}

fn bad_input(c: &Client, lab: &Lab, net: &Nets) {
    let raw = |m: &str, path: &str, body: &str| c.raw(m, path, Some(ALICE), Some(body)).unwrap();
    refused(c, lab, 400, "malformed JSON", || {
        raw("POST", "/v2.0/floatingips", "{\"floatingip\": ")
    });
    refused(c, lab, 400, "a wrong type", || {
        raw(
            "POST",
            "/v2.0/floatingips",
            r#"{"floatingip": {"floating_network_id": 7}}"#,
        )
    });
    refused(c, lab, 400, "an unknown field", || {
        raw(
            "POST",
            "/v2.0/floatingips",
            &json!({"floatingip": {"floating_network_id": net.public, "color": "red"}}).to_string(),
        )
    });
    refused(c, lab, 400, "a wrong wrapper", || {
        raw(
            "POST",
            "/v2.0/floatingips",
            &json!({"port": {}}).to_string(),
        )
    });
    refused(c, lab, 400, "an extra top-level key", || {
        raw(
            "POST",
            "/v2.0/floatingips",
            &json!({"floatingip": {"floating_network_id": net.public}, "x": 1}).to_string(),
        )
    });
    let big =
        json!({"floatingip": {"floating_network_id": net.public, "description": "x".repeat(5000)}})
            .to_string();
    refused(c, lab, 413, "a body over the limit", || {
        raw("POST", "/v2.0/floatingips", &big)
    });
    refused(c, lab, 400, "a description over 255 bytes", || {
        raw("POST", "/v2.0/floatingips", &json!({"floatingip": {"floating_network_id": net.public, "description": "x".repeat(300)}}).to_string())
    });
    refused(c, lab, 403, "a member creating a network", || {
        raw("POST", "/v2.0/networks", r#"{"network": {"name": "n"}}"#)
    });
    refused(c, lab, 403, "a member deleting a network", || {
        c.call(
            "DELETE",
            &format!("/v2.0/networks/{}", net.public),
            ALICE,
            None,
        )
    });
    refused(c, lab, 409, "the admin deleting a pool in use", || {
        c.call(
            "DELETE",
            &format!("/v2.0/networks/{}", net.public),
            ADMIN,
            None,
        )
    });
    refused(
        c,
        lab,
        409,
        "the admin deleting an internal network",
        || {
            c.call(
                "DELETE",
                &format!("/v2.0/networks/{}", net.internal),
                ADMIN,
                None,
            )
        },
    );
    refused(c, lab, 404, "an unknown route", || {
        c.call("GET", "/v2.0/routers", ALICE, None)
    });
    refused(c, lab, 405, "a wrong method", || {
        c.call("PATCH", "/v2.0/floatingips", ALICE, None)
    });
    // SQL-looking and Unicode text is data.
    for text in ["'; DROP TABLE floating_ips; --", "café ☕ 浮动"] {
        let r = c.call(
            "POST",
            "/v2.0/floatingips",
            ALICE,
            Some(&json!({"floatingip": {"floating_network_id": net.public, "description": text}})),
        );
        expect(&r, 201, text);
        let id = r.body["floatingip"]["id"].as_str().unwrap().to_owned();
        let q = format!("/v2.0/floatingips?description={}", form_encode(text));
        assert_eq!(
            ids(&c.call("GET", &q, ALICE, None).body, "floatingips"),
            [id.as_str()],
            "{text}"
        );
        expect(
            &c.call("DELETE", &format!("/v2.0/floatingips/{id}"), ALICE, None),
            204,
            text,
        );
    }
    let r = c.call("GET", "/v2.0/ports?name=%27%20OR%201%3D1%20--", ALICE, None);
    assert_eq!(ids(&r.body, "ports"), Vec::<String>::new());
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn quotas(c: &Client, lab: &Lab, net: &Nets) {
    refused(c, lab, 403, "a member setting a quota", || {
        c.call(
            "PUT",
            "/v2.0/quotas/demo",
            ALICE,
            Some(&json!({"quota": {"floatingip": 100}})),
        )
    });
    refused(c, lab, 404, "another project's quota", || {
        c.call("GET", "/v2.0/quotas/demo", BOB, None)
    });
    let r = c.call("GET", "/v2.0/quotas/demo", ALICE, None);
    expect(&r, 200, "own quota");
    assert_eq!(r.body, json!({"quota": {"floatingip": -1}}));
    // demo holds one floating IP (f1): below that is refused when checked.
    refused(c, lab, 400, "a limit below usage", || {
        c.call(
            "PUT",
            "/v2.0/quotas/demo",
            ADMIN,
            Some(&json!({"quota": {"floatingip": 0, "check_limit": true}})),
        )
    });
    let r = c.call(
        "PUT",
        "/v2.0/quotas/demo",
        ADMIN,
        Some(&json!({"quota": {"floatingip": 2}})),
    );
    expect(&r, 200, "set quota");
    assert_eq!(r.body, json!({"quota": {"floatingip": 2}}));
    let r = c.call("GET", "/v2.0/quotas/demo/details.json", ALICE, None);
    assert_eq!(
        r.body,
        json!({"quota": {"floatingip": {"limit": 2, "used": 1, "reserved": 0}}})
    );
    let body = json!({"floatingip": {"floating_network_id": net.public}});
    let r = c.call("POST", "/v2.0/floatingips", ALICE, Some(&body));
    expect(&r, 201, "within quota");
    let r = refused(c, lab, 409, "over quota", || {
        c.call("POST", "/v2.0/floatingips", ALICE, Some(&body))
    });
    assert_eq!(r.error_type(), Some("OverQuota"));
    let all = c.call("GET", "/v2.0/quotas", ADMIN, None);
    assert!(
        all.body["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["project_id"] == "demo" && q["floatingip"] == 2),
        "{}",
        all.text
    );
    expect(
        &c.call("DELETE", "/v2.0/quotas/demo", ADMIN, None),
        204,
        "reset quota",
    );
    assert_eq!(
        c.call("GET", "/v2.0/quotas/demo", ALICE, None).body,
        json!({"quota": {"floatingip": -1}})
    );

    // Identity: projects by name, for the openstack CLI's quota commands.
    let r = c.call("GET", "/identity/v3/projects?name=demo", ALICE, None);
    assert_eq!(r.body["projects"][0]["id"], "demo", "{}", r.text);
    expect(
        &c.call("GET", "/identity/v3/projects/other", ALICE, None),
        404,
        "another project",
    );
    expect(
        &c.call("GET", "/identity/v3/projects/other", ADMIN, None),
        200,
        "admin sees every project",
    );

    // Metrics: requests by route and status, and the data plane.
    let m = c.raw("GET", "/metrics", None, None).unwrap();
    expect(&m, 200, "metrics");
    for needle in [
        "floatip_api_requests_total{route=\"/v2.0/floatingips\",method=\"POST\",status=\"201\"}",
        "floatip_api_requests_total{route=\"/v2.0/floatingips/{id}\",method=\"PUT\",status=\"409\"}",
        "floatip_associations 1",
        "floatip_dataplane_attached 1",
        &format!("floatip_floating_ip_packets{{floating_ip=\"{FIP1}\",direction=\"in\"}}"),
        "floatip_agent_up 1",
    ] {
        assert!(
            m.text.contains(needle),
            "metrics lack {needle}:\n{}",
            m.text
        );
    }
}

/// After traffic, `promtool check metrics` accepts the exposition and a real Prometheus
/// server scraping the agent answers a query for the per-floating-IP counters.
fn prometheus(c: &Client, lab: &Lab) {
    let out = netns::exec(
        &lab.ext,
        &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", FIP1],
    );
    assert!(out.success(), "ping {FIP1}: {out}");
    let m = c.raw("GET", "/metrics", None, None).unwrap();
    assert_eq!(
        m.content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let file = lab.workdir.join("metrics.txt");
    std::fs::write(&file, &m.text).unwrap();
    let check = netns::exec(
        &lab.gw,
        &[
            "sh",
            "-c",
            &format!("promtool check metrics < {}", file.display()),
        ],
    );
    assert!(
        check.success(),
        "promtool rejects the metrics: {check}\n{}",
        m.text
    );
    let sample = format!("floatip_floating_ip_packets{{floating_ip=\"{FIP1}\",direction=\"in\"}} ");
    let n: u64 = m
        .text
        .lines()
        .find_map(|l| l.strip_prefix(&sample)?.parse().ok())
        .unwrap_or(0);
    assert!(n >= 3, "per-IP counter after 3 pings is {n}:\n{}", m.text);

    let dir = lab.workdir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: floatip\n    static_configs:\n      - targets: ['{}']\n", agent::LISTEN),
    )
    .unwrap();
    let mut server = netns::spawn(
        &lab.gw,
        &[
            "prometheus",
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    )
    .unwrap();
    server
        .wait_for(
            "Server is ready to receive web requests",
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let query = format!(
        "http://127.0.0.1:9090/api/v1/query?query=floatip_floating_ip_packets%7Bdirection%3D%22in%22%2Cfloating_ip%3D%22{FIP1}%22%7D"
    );
    let http = ureq::AgentBuilder::new().build();
    // Until the first scrape lands (bounded: a minute).
    let mut last = String::new();
    for _ in 0..120 {
        last = http
            .get(&query)
            .call()
            .map(|r| r.into_string().unwrap_or_default())
            .unwrap_or_else(|e| e.to_string());
        if let Ok(v) = serde_json::from_str::<Value>(&last)
            && let Some(value) = v["data"]["result"][0]["value"][1].as_str()
        {
            assert!(value.parse::<u64>().unwrap() >= 3, "{last}");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!(
        "Prometheus never returned the per-IP counter: {last}\n{}",
        server.stderr_so_far()
    );
}

/// The value of the unlabelled sample `name` in an exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}:\n{text}"))
}

/// Drift and repairs on `/metrics`: a pair written behind the database's back (`nat add`, as
/// an interrupted bulk associate would leave) shows as maps out of step with one differing
/// floating IP; the agent's next association write repairs it and counts the repair. The time
/// from a request to the maps is a histogram with one observation per association change.
fn repairs_and_drift(c: &Client, lab: &Lab) {
    let scrape = || c.raw("GET", "/metrics", None, None).unwrap().text;
    let pairs = lab.nat_pairs();
    let m = scrape();
    assert_eq!(sample(&m, "floatip_maps_in_step"), 1.0, "{m}");
    assert_eq!(sample(&m, "floatip_maps_differing_floating_ips"), 0.0);
    let repairs = sample(&m, "floatip_repairs_total");
    let repaired = sample(&m, "floatip_repaired_floating_ips_total");
    let writes = sample(&m, "floatip_api_write_to_maps_duration_seconds_count");
    assert!(
        writes >= 1.0,
        "associations were made through the API:\n{m}"
    );
    assert!(
        sample(&m, "floatip_api_write_to_maps_duration_seconds_sum") > 0.0,
        "{m}"
    );

    lab.ok(&["nat", "add", "203.0.113.19", "10.0.0.19"]);
    let m = scrape();
    assert_eq!(sample(&m, "floatip_maps_in_step"), 0.0, "{m}");
    assert_eq!(
        sample(&m, "floatip_maps_differing_floating_ips"),
        1.0,
        "{m}"
    );

    // FIP1 is on web1: off and on again, two association writes through the API.
    let fip = c
        .call(
            "GET",
            &format!("/v2.0/floatingips?floating_ip_address={FIP1}"),
            ADMIN,
            None,
        )
        .body["floatingips"][0]
        .clone();
    let (id, port) = (
        fip["id"].as_str().unwrap().to_owned(),
        fip["port_id"].clone(),
    );
    assert!(port.is_string(), "{fip}");
    for p in [Value::Null, port] {
        let r = c.call(
            "PUT",
            &format!("/v2.0/floatingips/{id}"),
            ADMIN,
            Some(&json!({"floatingip": {"port_id": p}})),
        );
        expect(&r, 200, "port_id off and on");
    }
    let m = scrape();
    assert_eq!(sample(&m, "floatip_repairs_total"), repairs + 1.0, "{m}");
    assert_eq!(
        sample(&m, "floatip_repaired_floating_ips_total"),
        repaired + 1.0
    );
    assert_eq!(sample(&m, "floatip_maps_in_step"), 1.0);
    assert_eq!(sample(&m, "floatip_maps_differing_floating_ips"), 0.0);
    assert_eq!(
        sample(&m, "floatip_api_write_to_maps_duration_seconds_count"),
        writes + 2.0
    );
    assert_eq!(lab.nat_pairs(), pairs);
}

/// A bounded flood of bad requests from 4 clients at once: each gets its Neutron error, the
/// state does not change, and the agent keeps serving.
fn flood(c: &Client, lab: &Lab, net: &Nets) {
    let before = snapshot(c, lab);
    let bodies = [
        "{".to_owned(),
        "[]".to_owned(),
        json!({"floatingip": {"floating_network_id": net.public, "x": 1}}).to_string(),
        json!({"floatingip": {"floating_network_id": 5}}).to_string(),
        "\u{0}\u{1}garbage".to_owned(),
    ];
    std::thread::scope(|s| {
        for t in 0..4 {
            let (bodies, gw) = (&bodies, lab.gw.clone());
            s.spawn(move || {
                in_netns(&gw, || {
                    let c = Client::new();
                    for i in 0..150 {
                        let body = &bodies[(i + t) % bodies.len()];
                        let r = c
                            .raw("POST", "/v2.0/floatingips", Some(ALICE), Some(body))
                            .unwrap();
                        assert_eq!(r.status, 400, "{body}: {}", r.text);
                        assert!(r.error_type().is_some(), "{}", r.text);
                    }
                })
            });
        }
    });
    assert_eq!(snapshot(c, lab), before, "the flood changed the state");
    expect(
        &c.call("GET", "/v2.0/floatingips", ALICE, None),
        200,
        "serving after the flood",
    );
}

/// Last: it locks the gateway's loopback out. `detached` made two failed logins already;
/// the configuration allows five.
fn login_lockout(c: &Client) {
    for i in 2..5 {
        expect(
            &c.call("GET", "/v2.0/networks", ("alice", "guess"), None),
            401,
            &format!("failure {i}"),
        );
    }
    let r = c.call("GET", "/v2.0/networks", ALICE, None);
    expect(&r, 429, "right password after too many failures");
}

/// Where and how the agent listens: plain HTTP only on loopback unless allowed, HTTPS with
/// rustls, configuration errors as one line and a non-zero exit.
#[test]
fn agent_listen_tls_and_config() {
    netns::require_root();
    let _serial = netns::serialize();
    let mut topo = netns::Topology::new();
    let ns = topo.namespace("agent").unwrap();
    let dir = topo.temp_dir("agent").unwrap();
    let bin = netns::floatip_binary().to_string_lossy().into_owned();
    let (state, bpffs) = (dir.join("state.db"), dir.join("no-bpffs"));
    let (state, bpffs) = (
        state.to_string_lossy().into_owned(),
        bpffs.to_string_lossy().into_owned(),
    );
    let floatip = |args: &[&str]| {
        let mut argv = vec![bin.as_str(), "--state", &state, "--bpffs", &bpffs, "agent"];
        argv.extend_from_slice(args);
        argv.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: &[&str]| {
        let argv = floatip(args);
        netns::exec(&ns, &argv.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let refused = |args: &[&str], needle: &str| {
        let out = run(args);
        assert!(
            !out.success() && out.stderr.contains(needle) && out.stderr.lines().count() == 1,
            "{out}"
        );
    };
    refused(
        &["--listen", "0.0.0.0:9696"],
        "refusing to serve plain HTTP on non-loopback address 0.0.0.0:9696",
    );
    refused(
        &[
            "--listen",
            "127.0.0.1:9696",
            "--metrics-listen",
            "0.0.0.0:9100",
        ],
        "refusing to serve plain HTTP",
    );
    refused(
        &["--config", "/nonexistent/agent.toml"],
        "cannot read /nonexistent/agent.toml",
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:9696\"\ncolour = \"blue\"\n").unwrap();
    refused(
        &["--config", &bad.to_string_lossy()],
        "unknown field `colour`",
    );
    refused(
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        "cannot load TLS certificate",
    );

    let spawn = |args: &[&str], wait: &str| {
        let argv = floatip(args);
        let mut s =
            netns::spawn(&ns, &argv.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        s.wait_for(wait, std::time::Duration::from_secs(20))
            .unwrap();
        s
    };
    // Explicitly allowed: plain HTTP on every address.
    let insecure = spawn(
        &["--listen", "0.0.0.0:9698", "--allow-insecure"],
        "serving the API on http://0.0.0.0:9698",
    );
    drop(insecure);

    // HTTPS with a self-signed certificate, checked by curl against it.
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let out = netns::exec(
        &ns,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            "/CN=floatip-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
    );
    assert!(out.success(), "{out}");
    let _tls = spawn(
        &[
            "--listen",
            "127.0.0.1:9697",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        "serving the API on https://127.0.0.1:9697",
    );
    let out = netns::exec(
        &ns,
        &["curl", "-sS", "--cacert", &cert, "https://127.0.0.1:9697/"],
    );
    assert!(
        out.success() && out.stdout.contains("\"https://127.0.0.1:9697/v2.0/\""),
        "{out}"
    );
    let out = netns::exec(
        &ns,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &cert,
            "https://127.0.0.1:9697/v2.0/networks",
        ],
    );
    assert_eq!(out.stdout, "401", "{out}");
    let out = netns::exec(
        &ns,
        &["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9697/"],
    );
    assert!(
        !out.stdout.contains("versions"),
        "plain HTTP must not be served on the TLS port: {out}"
    );
}

/// The gratuitous ARP of an association is sent off the request path: with every announcement
/// made 1.5 s slow (`FLOATIP_PAUSE=garp:1500`), associating and moving a floating IP through the
/// API still answer at once, and the announcement still reaches the external network
/// afterwards, once for both changes (the move, queued while the first was pending, is
/// coalesced with it).
#[test]
fn announcement_off_the_request_path() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = agent::lab(NETPROBE, ADMIN, "203.0.113.10-203.0.113.20");
    const PAUSE_MS: u128 = 1500;
    let mut agent =
        agent::start_with_env(&lab, &[&format!("FLOATIP_PAUSE=garp:{PAUSE_MS}")], &[]).unwrap();
    // The router's side of the external link receives what the gateway announces.
    let capture = lab.capture(&lab.rtr, "r-gw", "garp").unwrap();
    let answered_ms = in_netns(&lab.gw, || {
        let c = Client::new();
        let (public, internal) = (c.network_id(ADMIN, "public"), c.network_id(ADMIN, "gw-int"));
        let port = |name: &str, ip: &str| {
            let body = json!({"port": {"network_id": internal, "name": name,
                "fixed_ips": [{"ip_address": ip}]}});
            let r = c.call("POST", "/v2.0/ports", ADMIN, Some(&body));
            expect(&r, 201, "create port");
            r.body["port"]["id"].as_str().unwrap().to_owned()
        };
        let (web1, web2) = (port("web1", INST1_IP), port("web2", INST2_IP));
        let body = json!({"floatingip": {"floating_network_id": public,
            "floating_ip_address": FIP1}});
        let r = c.call("POST", "/v2.0/floatingips", ADMIN, Some(&body));
        expect(&r, 201, "create floating IP");
        let fip = r.body["floatingip"]["id"].as_str().unwrap().to_owned();
        let path = format!("/v2.0/floatingips/{fip}");
        let mut answered = Vec::new();
        for (port, fixed) in [(&web1, INST1_IP), (&web2, INST2_IP)] {
            let body = json!({"floatingip": {"port_id": port}});
            let t = std::time::Instant::now();
            let r = c.call("PUT", &path, ADMIN, Some(&body));
            answered.push(t.elapsed().as_millis());
            expect(&r, 200, "associate / move");
            assert_eq!(
                r.body["floatingip"]["fixed_ip_address"], fixed,
                "{}",
                r.text
            );
            assert_eq!(r.body["floatingip"]["status"], "ACTIVE", "{}", r.text);
        }
        answered
    });
    assert!(
        answered_ms.iter().all(|&ms| ms < PAUSE_MS / 2),
        "associate and move answered in {answered_ms:?} ms: they waited for the {PAUSE_MS} ms \
         announcement"
    );
    assert_eq!(
        lab.nat_pairs(),
        [(FIP1.to_owned(), INST2_IP.to_owned())],
        "the maps hold the moved pair before any announcement"
    );
    // The announcement (three rounds) follows once the pause is over.
    std::thread::sleep(std::time::Duration::from_millis(PAUSE_MS as u64 + 1000));
    let seen = capture.stop().unwrap();
    // Nothing else in this test sends ARP naming the floating IP (no traffic is sent to it).
    let arp = |op: &str| {
        seen.lines()
            .filter(|l| l.contains("ARP") && l.contains(op) && l.contains(FIP1))
            .count()
    };
    let (requests, replies) = (arp("Request"), arp("Reply"));
    assert_eq!(
        (requests, replies),
        (3, 3),
        "one announcement (3 requests, 3 replies) for the association and the move:\n{seen}"
    );
    agent.signal(libc::SIGTERM);
    let out = agent.finish(std::time::Duration::from_secs(10));
    assert!(out.success(), "agent: {out}");
}

/// Group commit: concurrent writers' requests are committed in batches (the agent's
/// `floatip_control_batches_total` counts them), every answer is what the database then holds,
/// and a request that fails inside a batch (a port that already has a floating IP: 409)
/// changes nothing and takes none of the others in its batch down.
#[test]
fn group_commit() {
    netns::require_root();
    let _serial = netns::serialize();
    let lab = agent::lab(NETPROBE, ADMIN, "203.0.113.10-203.0.113.40");
    let _agent = agent::start(&lab, &[]).unwrap();
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 15;
    let (fips, ports) = in_netns(&lab.gw, || {
        let c = Client::new();
        let (public, internal) = (c.network_id(ADMIN, "public"), c.network_id(ADMIN, "gw-int"));
        // Slot 0 is the taken port every client also tries (and fails) to take.
        let mut fips = Vec::new();
        let mut ports = Vec::new();
        for i in 0..=CLIENTS {
            let body = json!({"port": {"network_id": internal, "name": format!("p{i}"),
                "fixed_ips": [{"ip_address": format!("10.0.0.{}", 100 + i)}]}});
            let r = c.call("POST", "/v2.0/ports", ADMIN, Some(&body));
            expect(&r, 201, "create port");
            ports.push(r.body["port"]["id"].as_str().unwrap().to_owned());
            let body = json!({"floatingip": {"floating_network_id": public}});
            let r = c.call("POST", "/v2.0/floatingips", ADMIN, Some(&body));
            expect(&r, 201, "create floating IP");
            fips.push(r.body["floatingip"].clone());
        }
        let body = json!({"floatingip": {"port_id": ports[0]}});
        let id = fips[0]["id"].as_str().unwrap();
        let r = c.call(
            "PUT",
            &format!("/v2.0/floatingips/{id}"),
            ADMIN,
            Some(&body),
        );
        expect(&r, 200, "associate the taken port");
        (fips, ports)
    });
    let batches = |c: &Client| {
        let m = c.raw("GET", "/metrics", None, None).unwrap().text;
        (
            sample(&m, "floatip_control_batches_total"),
            sample(&m, "floatip_control_batched_requests_total"),
        )
    };
    let before = in_netns(&lab.gw, || batches(&Client::new()));
    std::thread::scope(|s| {
        for i in 1..=CLIENTS {
            let (gw, fips, ports) = (lab.gw.clone(), &fips, &ports);
            s.spawn(move || {
                in_netns(&gw, || {
                    let c = Client::new();
                    let fip = &fips[i];
                    let path = format!("/v2.0/floatingips/{}", fip["id"].as_str().unwrap());
                    let fixed = format!("10.0.0.{}", 100 + i);
                    for _ in 0..ROUNDS {
                        let set = |port: Option<&String>| {
                            let body = json!({"floatingip": {"port_id": port}});
                            c.call("PUT", &path, ADMIN, Some(&body))
                        };
                        let r = set(Some(&ports[i]));
                        expect(&r, 200, "associate");
                        assert_eq!(r.body["floatingip"]["fixed_ip_address"], fixed.as_str());
                        assert_eq!(r.body["floatingip"]["status"], "ACTIVE");
                        let r = set(Some(&ports[0]));
                        expect(&r, 409, "associate with the taken port");
                        let r = c.call("GET", &path, ADMIN, None);
                        assert_eq!(
                            r.body["floatingip"]["fixed_ip_address"],
                            fixed.as_str(),
                            "the failed move changed the floating IP: {}",
                            r.text
                        );
                        let r = set(None);
                        expect(&r, 200, "disassociate");
                        assert_eq!(r.body["floatingip"]["fixed_ip_address"], Value::Null);
                    }
                })
            });
        }
    });
    let after = in_netns(&lab.gw, || batches(&Client::new()));
    let (batched, jobs) = (after.0 - before.0, after.1 - before.1);
    assert!(
        batched > 0.0 && jobs >= 2.0 * batched,
        "{CLIENTS} concurrent clients: {batched} batches of {jobs} operations"
    );
    // A fresh process sees every answered change committed, and the maps agree.
    let fip0 = fips[0]["floating_ip_address"].as_str().unwrap();
    assert_eq!(
        lab.nat_pairs(),
        [(fip0.to_owned(), "10.0.0.100".to_owned())]
    );
    let sync = lab.json(&["status"])["sync"].clone();
    assert_eq!(sync["state"], "clean", "{sync}");
    let listed = lab.json(&["ip", "list"]);
    let associated: Vec<&Value> = listed
        .as_array()
        .unwrap_or_else(|| panic!("ip list: {listed}"))
        .iter()
        .filter(|r| !r["fixed_ip_address"].is_null())
        .collect();
    assert_eq!(associated.len(), 1, "{listed}");
}
