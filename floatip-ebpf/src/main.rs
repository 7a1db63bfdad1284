//! Entry points of the floatip data plane. Each is thin: it wraps the
//! context in a `Frame`, runs the side's translation and turns the verdict
//! into the program type's action.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::generated::bpf_redirect,
    macros::{classifier, tracepoint, xdp},
    programs::{TcContext, TracePointContext, XdpContext},
};
use floatip_common::{outcome, send_drops};
use floatip_ebpf::{
    forward,
    frame::{Frame, Tc, Xdp},
    log,
    maps::{self, REDIRECT},
    stats::{count, count_send_drop},
    translate,
    verdict::Verdict,
};

#[xdp]
pub fn floatip_xdp_ext(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let verdict = translate::external(&mut Xdp(&ctx), ifindex);
    xdp_action(&ctx, ifindex, verdict)
}

#[xdp]
pub fn floatip_xdp_int(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let verdict = translate::internal(&mut Xdp(&ctx), ifindex);
    xdp_action(&ctx, ifindex, verdict)
}

#[classifier]
pub fn floatip_tc_ext(ctx: TcContext) -> i32 {
    let ifindex = tc_ifindex(&ctx);
    pull(&ctx);
    let verdict = translate::external(&mut Tc(&ctx), ifindex);
    tc_action(&ctx, ifindex, verdict)
}

#[classifier]
pub fn floatip_tc_int(ctx: TcContext) -> i32 {
    let ifindex = tc_ifindex(&ctx);
    pull(&ctx);
    let verdict = translate::internal(&mut Tc(&ctx), ifindex);
    tc_action(&ctx, ifindex, verdict)
}

/// Egress of an external NIC: what leaves always leaves; an ICMP error of
/// the gateway's own kernel gets its quote translated back first.
#[classifier]
pub fn floatip_tc_egress(ctx: TcContext) -> i32 {
    pull(&ctx);
    if let Ok(true) = translate::kernel_error(&mut Tc(&ctx)) {
        count(outcome::QUOTES_RESTORED);
    }
    TC_ACT_OK as i32
}

/// A redirect the kernel refused after the program returned (the frame is dropped).
#[tracepoint]
pub fn floatip_send_drops(ctx: TracePointContext) -> u32 {
    // Checked against the event's format by the loader.
    let prog = unsafe { ctx.read_at::<u32>(send_drops::PROG_ID.1) }.unwrap_or(0);
    count_send_drop(prog);
    0
}

#[inline(always)]
fn xdp_action(ctx: &XdpContext, ifindex: u32, verdict: Result<Verdict, ()>) -> u32 {
    match verdict {
        Ok(Verdict::Pass) => {
            count(outcome::PASSED);
            xdp_action::XDP_PASS
        }
        // Malformed or unexpected (stacked tags, bad lengths): untouched, to the kernel.
        Err(()) => {
            count(outcome::ERRORS);
            log::malformed(ctx, ifindex, Xdp(ctx).packet_len() as u32);
            xdp_action::XDP_PASS
        }
        Ok(Verdict::ToKernel { why }) => {
            count(outcome::PASSED_TO_KERNEL);
            log::to_kernel(ctx, ifindex, why.why());
            xdp_action::XDP_PASS
        }
        Ok(Verdict::Drop { why, src, dst }) => {
            log::dropped(ctx, ifindex, why, src, dst);
            xdp_action::XDP_DROP
        }
        // Redirected to its own NIC rather than XDP_TX: on veth, XDP_TX does
        // not wake the peer, so the reply would sit until other traffic came.
        Ok(Verdict::Reply) => REDIRECT.redirect(ifindex, 0).unwrap_or(xdp_action::XDP_TX),
        Ok(Verdict::Forward { l3, route }) => {
            // The devmap holds exactly the managed NICs: a route out of any
            // other falls back to XDP_PASS (the flags' low bits) and the
            // kernel forwards the translated packet.
            let redirected = route.map_err(|m| m.why()).and_then(|r| {
                if REDIRECT.redirect(r.ifindex, xdp_action::XDP_PASS as u64)
                    != Ok(xdp_action::XDP_REDIRECT)
                {
                    return Err("egress is not a managed NIC");
                }
                forward::to_next_hop(&Xdp(ctx), l3, &r).map_err(|()| "header out of reach")
            });
            match redirected {
                Ok(()) => {
                    count(outcome::REDIRECTED);
                    xdp_action::XDP_REDIRECT
                }
                Err(why) => {
                    count(outcome::PASSED_TO_KERNEL);
                    log::to_kernel(ctx, ifindex, why);
                    xdp_action::XDP_PASS
                }
            }
        }
    }
}

#[inline(always)]
fn tc_action(ctx: &TcContext, ifindex: u32, verdict: Result<Verdict, ()>) -> i32 {
    match verdict {
        Ok(Verdict::Pass) => {
            count(outcome::PASSED);
            TC_ACT_OK as i32
        }
        Err(()) => {
            count(outcome::ERRORS);
            log::malformed(ctx, ifindex, ctx.len());
            TC_ACT_OK as i32
        }
        Ok(Verdict::ToKernel { why }) => {
            count(outcome::PASSED_TO_KERNEL);
            log::to_kernel(ctx, ifindex, why.why());
            TC_ACT_OK as i32
        }
        Ok(Verdict::Drop { why, src, dst }) => {
            log::dropped(ctx, ifindex, why, src, dst);
            TC_ACT_SHOT as i32
        }
        Ok(Verdict::Reply) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Ok(Verdict::Forward { l3, route }) => {
            // bpf_redirect takes any ifindex: only managed NICs qualify.
            let route = route.map_err(|m| m.why()).and_then(|r| {
                if maps::managed_mac(r.ifindex).is_none() {
                    return Err("egress is not a managed NIC");
                }
                forward::to_next_hop(&Tc(ctx), l3, &r).map_err(|()| "header out of reach")?;
                Ok(r)
            });
            match route {
                Ok(r) => {
                    count(outcome::REDIRECTED);
                    unsafe { bpf_redirect(r.ifindex, 0) as i32 }
                }
                Err(why) => {
                    count(outcome::PASSED_TO_KERNEL);
                    log::to_kernel(ctx, ifindex, why);
                    TC_ACT_OK as i32
                }
            }
        }
    }
}

#[inline(always)]
fn tc_ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Makes the headers (up to the deepest ICMP quote) directly readable.
#[inline(always)]
fn pull(ctx: &TcContext) {
    let want = core::cmp::min(ctx.len(), 192);
    let _ = ctx.pull_data(want);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
