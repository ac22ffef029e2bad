//! The two choices `mfe infra` makes on its own — which image a docker service runs and which
//! runtime `auto` picks — as pure functions over what was observed, so the rules are tested
//! without a daemon and read in one place.
//!
//! # Images
//! 1. `MFE_*_IMAGE` set: that image, pulled when absent (an explicit choice always wins).
//! 2. The service's container exists: the image it was made from (official or local), so a
//!    stack never changes image, and thus data directory owner, behind the user's back.
//! 3. The compose file's image (the official one) when present.
//! 4. The official image pulled, when the registry answers for it.
//! 5. The local stand-in of `make images` (mfe-local/*) when the official image is absent and
//!    cannot be pulled. Otherwise the service cannot start, and the line says what to run.
//!
//! # Runtime `auto`
//! 1. A native component running: native (its processes hold the ports).
//! 2. No Docker daemon: native.
//! 3. The docker project has running containers: docker.
//! 4. Only the native state dir holds data: native (the next start brings that data back).
//! 5. The docker project holds containers or volumes: docker.
//! 6. Every image can be had (rules above): docker; else native, saying which image is missing.
//!
//! `infra clean` under `auto` cleans every runtime that holds something ([`clean_targets`]).

use crate::config::RuntimeKind;

/// What is known about one compose service's image.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    /// The image docker-compose.yml names after interpolation.
    pub named: String,
    /// `MFE_*_IMAGE` chose `named`.
    pub explicit: bool,
    pub named_present: bool,
    /// The local stand-in of `make images` for this service, if there is one.
    pub local: Option<String>,
    pub local_present: bool,
    /// The image the service's existing container was created from.
    pub container_image: Option<String>,
    /// Whether the registry answers for `named`: `None` until asked, `Err` with its reason.
    pub pullable: Option<Result<(), String>>,
}

/// Why an image is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageWhy {
    Explicit,
    Container,
    Present,
    /// The local stand-in, because the official image is absent and cannot be pulled.
    LocalStandIn {
        official: String,
        reason: String,
    },
}

/// The decision for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageChoice {
    /// Run `image`, present locally (or, for [`ImageWhy::Explicit`], pulled first if not).
    Use { image: String, why: ImageWhy },
    /// Pull the official image, then run it.
    Pull { image: String },
    /// Ask the registry whether `named` can be pulled, then decide again.
    AskRegistry,
    /// Nothing can run this service.
    Unavailable { official: String, local: Option<String>, reason: String },
}

impl ImageChoice {
    /// The image a container would be created from, when there is one.
    pub fn image(&self) -> Option<&str> {
        match self {
            ImageChoice::Use { image, .. } | ImageChoice::Pull { image } => Some(image),
            _ => None,
        }
    }
}

pub fn choose_image(f: &ImageFacts) -> ImageChoice {
    if f.explicit {
        return ImageChoice::Use { image: f.named.clone(), why: ImageWhy::Explicit };
    }
    if let Some(image) = &f.container_image {
        if *image == f.named || Some(image) == f.local.as_ref() {
            return ImageChoice::Use { image: image.clone(), why: ImageWhy::Container };
        }
    }
    if f.named_present {
        return ImageChoice::Use { image: f.named.clone(), why: ImageWhy::Present };
    }
    match &f.pullable {
        None => ImageChoice::AskRegistry,
        Some(Ok(())) => ImageChoice::Pull { image: f.named.clone() },
        Some(Err(reason)) => match (&f.local, f.local_present) {
            (Some(local), true) => ImageChoice::Use {
                image: local.clone(),
                why: ImageWhy::LocalStandIn { official: f.named.clone(), reason: reason.clone() },
            },
            _ => ImageChoice::Unavailable { official: f.named.clone(), local: f.local.clone(), reason: reason.clone() },
        },
    }
}

/// One line saying which images are used and why, e.g.
/// `images: mfe-local/redis:7 (the local stand-in of `make images`: redis:7 is absent and cannot be pulled: …)`.
/// Each image is named once; groups keep the order of first use.
pub fn describe_images(choices: &[ImageChoice]) -> String {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut stand_in: Vec<(String, String, String)> = Vec::new();
    for c in choices {
        let (image, why) = match c {
            ImageChoice::Use { image, why: ImageWhy::LocalStandIn { official, reason } } => {
                if !seen.contains(image) {
                    seen.push(image.clone());
                    stand_in.push((image.clone(), official.clone(), reason.clone()));
                }
                continue;
            }
            ImageChoice::Use { image, why: ImageWhy::Explicit } => (image, "set by MFE_*_IMAGE"),
            ImageChoice::Use { image, why: ImageWhy::Container } => (image, "the image of the existing container"),
            ImageChoice::Use { image, why: ImageWhy::Present } => (image, "present"),
            ImageChoice::Pull { image } => (image, "to be pulled"),
            _ => continue,
        };
        if seen.contains(image) {
            continue;
        }
        seen.push(image.clone());
        match groups.iter_mut().find(|(w, _)| w == why) {
            Some((_, list)) => list.push(image.clone()),
            None => groups.push((why.to_string(), vec![image.clone()])),
        }
    }
    let mut parts: Vec<String> = groups.into_iter().map(|(why, list)| format!("{} ({why})", list.join(", "))).collect();
    if !stand_in.is_empty() {
        let locals: Vec<&str> = stand_in.iter().map(|(l, _, _)| l.as_str()).collect();
        let officials: Vec<&str> = stand_in.iter().map(|(_, o, _)| o.as_str()).collect();
        let (noun, verb) = if officials.len() == 1 { ("stand-in", "is") } else { ("stand-ins", "are") };
        parts.push(format!(
            "{} (the local {noun} of `make images`: {} {verb} absent and cannot be pulled: {}; MFE_*_IMAGE chooses others)",
            locals.join(", "),
            officials.join(", "),
            stand_in[0].2
        ));
    }
    format!("images: {}", parts.join("; "))
}

/// Why the docker runtime cannot start the stack, from the unavailable images; `None` when
/// every service has an image.
pub fn missing_images(choices: &[ImageChoice]) -> Option<String> {
    let mut officials: Vec<&str> = Vec::new();
    let mut locals: Vec<&str> = Vec::new();
    let mut reason = "";
    for c in choices {
        if let ImageChoice::Unavailable { official, local, reason: r } = c {
            if !officials.contains(&official.as_str()) {
                officials.push(official);
            }
            if let Some(l) = local.as_deref().filter(|l| !locals.contains(l)) {
                locals.push(l);
            }
            reason = r;
        }
    }
    if officials.is_empty() {
        return None;
    }
    let locals = match locals.len() {
        0 => String::new(),
        1 => format!(" nor the local image {}", locals[0]),
        _ => format!(" nor the local images {}", locals.join(", ")),
    };
    let verb = if officials.len() == 1 { "is" } else { "are" };
    Some(format!(
        "neither {}{locals} {verb} present and no registry answers ({reason}) — run `make images` for the docker runtime",
        officials.join(", ")
    ))
}

/// What `auto` knows about the docker side.
#[derive(Debug, Clone)]
pub struct DockerFacts {
    /// The compose project (COMPOSE_PROJECT_NAME).
    pub project: String,
    /// A container of the project is running.
    pub running: bool,
    /// The project has containers or volumes (its data).
    pub has_data: bool,
    /// `Err` says which images are missing (see [`missing_images`]).
    pub images: Result<(), String>,
}

/// What `auto` knows about both runtimes.
#[derive(Debug, Clone)]
pub struct RuntimeFacts {
    /// The native state dir (for messages).
    pub state_dir: String,
    /// A native component that is running.
    pub native_running: Option<String>,
    /// The native state dir holds data.
    pub native_data: bool,
    /// `Err` says why no Docker daemon answers.
    pub docker: Result<DockerFacts, String>,
}

/// The runtime `auto` picks and the reason printed after `runtime: <kind> (`.
pub fn choose_runtime(f: &RuntimeFacts) -> (RuntimeKind, String) {
    if let Some(c) = &f.native_running {
        return (RuntimeKind::Native, format!("{c} is running from {}", f.state_dir));
    }
    let d = match &f.docker {
        Err(reason) => return (RuntimeKind::Native, format!("no Docker daemon: {reason}")),
        Ok(d) => d,
    };
    if d.running {
        return (RuntimeKind::Docker, format!("containers of project {} are running", d.project));
    }
    match (f.native_data, d.has_data) {
        (true, false) => {
            return (
                RuntimeKind::Native,
                format!("its data is in {} and docker project {} has none", f.state_dir, d.project),
            )
        }
        (true, true) => {
            return (
                RuntimeKind::Docker,
                format!(
                    "docker project {} holds data; so does {} — --runtime native selects that one",
                    d.project, f.state_dir
                ),
            )
        }
        (false, true) => return (RuntimeKind::Docker, format!("docker project {} holds its data", d.project)),
        (false, false) => {}
    }
    match &d.images {
        Ok(()) => (RuntimeKind::Docker, "a Docker daemon answers and every image is at hand".into()),
        Err(missing) => (RuntimeKind::Native, format!("a Docker daemon answers, but {missing}")),
    }
}

/// The runtimes `infra clean` under `auto` removes: every one that runs something or holds
/// data for this configuration, as `docker compose down -v` removes everything of its project —
/// cleaning only the one `auto` would start leaves the other's data to come back at the next
/// start. Empty when neither holds anything.
pub fn clean_targets(f: &RuntimeFacts) -> Vec<RuntimeKind> {
    let mut out = Vec::new();
    if f.native_running.is_some() || f.native_data {
        out.push(RuntimeKind::Native);
    }
    if let Ok(d) = &f.docker {
        if d.running || d.has_data {
            out.push(RuntimeKind::Docker);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn official_absent() -> ImageFacts {
        ImageFacts {
            named: "postgres:15".into(),
            local: Some("mfe-local/postgres:15".into()),
            local_present: true,
            ..Default::default()
        }
    }

    const OFFLINE: &str = "lookup registry-1.docker.io: no such host";

    #[test]
    fn the_local_stand_in_runs_only_when_the_official_image_is_absent_and_cannot_be_pulled() {
        let mut f = official_absent();
        assert_eq!(choose_image(&f), ImageChoice::AskRegistry);
        f.pullable = Some(Ok(()));
        assert_eq!(choose_image(&f), ImageChoice::Pull { image: "postgres:15".into() });
        f.pullable = Some(Err(OFFLINE.into()));
        assert_eq!(
            choose_image(&f),
            ImageChoice::Use {
                image: "mfe-local/postgres:15".into(),
                why: ImageWhy::LocalStandIn { official: "postgres:15".into(), reason: OFFLINE.into() }
            }
        );
        f.named_present = true;
        assert_eq!(choose_image(&f), ImageChoice::Use { image: "postgres:15".into(), why: ImageWhy::Present });
    }

    #[test]
    fn an_explicit_image_wins_over_everything_and_an_existing_container_keeps_its_image() {
        let mut f = official_absent();
        f.pullable = Some(Err(OFFLINE.into()));
        f.container_image = Some("postgres:15".into());
        assert_eq!(choose_image(&f), ImageChoice::Use { image: "postgres:15".into(), why: ImageWhy::Container });
        f.container_image = Some("someone/else:1".into());
        assert!(matches!(choose_image(&f), ImageChoice::Use { why: ImageWhy::LocalStandIn { .. }, .. }));
        f.named = "registry.example/pg:15".into();
        f.explicit = true;
        assert_eq!(
            choose_image(&f),
            ImageChoice::Use { image: "registry.example/pg:15".into(), why: ImageWhy::Explicit }
        );
    }

    #[test]
    fn without_official_local_or_registry_the_service_is_unavailable_and_the_line_says_what_to_run() {
        let mut f = official_absent();
        f.local_present = false;
        f.pullable = Some(Err(OFFLINE.into()));
        let c = choose_image(&f);
        assert!(matches!(c, ImageChoice::Unavailable { .. }), "{c:?}");
        let line = missing_images(&[c.clone(), c]).unwrap();
        assert_eq!(
            line,
            format!(
                "neither postgres:15 nor the local image mfe-local/postgres:15 is present and no registry answers \
                 ({OFFLINE}) — run `make images` for the docker runtime"
            )
        );
        assert_eq!(missing_images(&[ImageChoice::Pull { image: "redis:7".into() }]), None);
    }

    #[test]
    fn the_image_line_names_each_image_once_with_its_reason() {
        let local = |l: &str, o: &str| ImageChoice::Use {
            image: l.into(),
            why: ImageWhy::LocalStandIn { official: o.into(), reason: OFFLINE.into() },
        };
        let line = describe_images(&[
            local("mfe-local/postgres:15", "postgres:15"),
            local("mfe-local/postgres:15", "postgres:15"),
            local("mfe-local/redis:7", "redis:7"),
            ImageChoice::Use { image: "nginx:1.27".into(), why: ImageWhy::Present },
        ]);
        assert_eq!(
            line,
            format!(
                "images: nginx:1.27 (present); mfe-local/postgres:15, mfe-local/redis:7 (the local stand-ins of \
                 `make images`: postgres:15, redis:7 are absent and cannot be pulled: {OFFLINE}; MFE_*_IMAGE \
                 chooses others)"
            )
        );
    }

    fn facts(native_data: bool, docker: Result<DockerFacts, String>) -> RuntimeFacts {
        RuntimeFacts { state_dir: "/tmp/s".into(), native_running: None, native_data, docker }
    }

    fn daemon(running: bool, has_data: bool, images: Result<(), String>) -> Result<DockerFacts, String> {
        Ok(DockerFacts { project: "p".into(), running, has_data, images })
    }

    #[test]
    fn auto_picks_native_when_the_daemon_answers_but_no_image_can_be_had() {
        let missing = "neither postgres:15 nor the local image mfe-local/postgres:15 is present".to_string();
        let (kind, why) = choose_runtime(&facts(false, daemon(false, false, Err(missing.clone()))));
        assert_eq!(kind, RuntimeKind::Native);
        assert_eq!(why, format!("a Docker daemon answers, but {missing}"));
        assert_eq!(choose_runtime(&facts(false, daemon(false, false, Ok(())))).0, RuntimeKind::Docker);
        assert_eq!(choose_runtime(&facts(false, Err("no socket".into()))).0, RuntimeKind::Native);
    }

    #[test]
    fn auto_follows_what_runs_then_where_the_data_is() {
        let mut f = facts(true, daemon(true, true, Ok(())));
        f.native_running = Some("redis".into());
        assert_eq!(choose_runtime(&f).0, RuntimeKind::Native, "a running native component wins");
        assert_eq!(choose_runtime(&facts(true, daemon(true, true, Ok(())))).0, RuntimeKind::Docker);
        let (kind, why) = choose_runtime(&facts(true, daemon(false, false, Ok(()))));
        assert_eq!((kind, why.as_str()), (RuntimeKind::Native, "its data is in /tmp/s and docker project p has none"));
        assert_eq!(choose_runtime(&facts(false, daemon(false, true, Err("x".into())))).0, RuntimeKind::Docker);
        let (kind, why) = choose_runtime(&facts(true, daemon(false, true, Ok(()))));
        assert_eq!(kind, RuntimeKind::Docker);
        assert!(why.contains("--runtime native"), "{why}");
    }

    #[test]
    fn clean_under_auto_removes_every_runtime_that_holds_something() {
        assert_eq!(clean_targets(&facts(true, daemon(false, false, Ok(())))), [RuntimeKind::Native]);
        assert_eq!(
            clean_targets(&facts(true, daemon(false, true, Ok(())))),
            [RuntimeKind::Native, RuntimeKind::Docker]
        );
        assert_eq!(clean_targets(&facts(false, daemon(true, false, Ok(())))), [RuntimeKind::Docker]);
        assert_eq!(clean_targets(&facts(true, Err("no daemon".into()))), [RuntimeKind::Native]);
        assert_eq!(clean_targets(&facts(false, daemon(false, false, Ok(())))), Vec::<RuntimeKind>::new());
    }
}
