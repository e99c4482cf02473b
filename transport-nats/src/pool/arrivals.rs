//! What arrives from members, the parent's side: the loop that reads their outputs and ends,
//! each message's place in its member's order, the result credit, the outputs and ends of
//! tasks (taken only from the member that holds the task), and the loop that tells members
//! how many of their outputs the program took.

use super::sessions::Arrival;
use super::shared::{lock, Ack, Shared};
use crate::error::RawTaskError;
use crate::wire::{self, EndMsg, Names, OutputMsg, Up, UpMsg};
use futures_util::{FutureExt, StreamExt};
use looppool_core::TaskError;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Where message `seq` of run `nonce` of `member` stands: `Err` if that run is not the
    /// member's last.
    pub(super) fn arrive(&self, member: &str, nonce: u64, seq: u64) -> Result<Arrival, String> {
        match self.lock().sessions.get_mut(member) {
            Some(s) if s.nonce == nonce => Ok(s.arrive(seq)),
            Some(_) => Err(format!(
                "message {seq} from a run of member {member} that is not in the pool"
            )),
            None => Err(format!(
                "message {seq} from member {member}, which never joined"
            )),
        }
    }

    /// Counts one more output of run `nonce` of `member`; `Err` if the program has more than
    /// the result credit of the run's outputs to take (a member that does not keep to its
    /// credit: the output is refused, and counts as taken).
    pub(super) fn within_credit(&self, member: &str, nonce: u64) -> Result<(), String> {
        let acked = match lock(&self.acked).get(member) {
            Some((run, acked)) if *run == nonce => *acked,
            _ => 0,
        };
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(member).filter(|s| s.nonce == nonce) else {
            return Ok(());
        };
        session.outputs += 1;
        let credit = self.settings.result_credit as u64;
        if session.outputs.saturating_sub(acked) > credit {
            return Err(format!(
                "output {} from member {member}, past its result credit of {credit}",
                session.outputs
            ));
        }
        Ok(())
    }

    /// Ends a task as `member` reports (its last run's next message), if it holds the task.
    pub(super) fn on_end(&self, member: &str, end: EndMsg) -> Result<(), String> {
        let mut inner = self.lock();
        let held = inner.holds(end.id, member);
        let Some(p) = inner.tasks.get_mut(&end.id) else {
            tracing::debug!(
                member,
                task = end.id,
                "end of a task already ended (a rerun)"
            );
            return Ok(());
        };
        if !held {
            return Err(format!(
                "the end of task {} from member {member}, which does not hold it",
                end.id
            ));
        }
        if p.seen_from(member) < end.outputs {
            p.parked = Some((member.into(), end));
            return Ok(());
        }
        p.at.set_worker(usize::try_from(end.worker).unwrap_or(usize::MAX));
        let result = outcome(member, end.outcome);
        inner.finish(end.id, member, end.deliveries, result);
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Accepts an output from `member` (its last run's next message) if it holds its task.
    /// Counts an output of a task (one that could not be delivered included). Returns whether
    /// the task is a call's, and its end if that was waiting for this output: the caller ends
    /// the task ([`end_parked`](Self::end_parked)) once the output went where it goes.
    pub(super) fn on_output(
        &self,
        member: &str,
        output: &OutputMsg,
        dropped: Option<&String>,
    ) -> Result<Counted, String> {
        let mut inner = self.lock();
        let Some(id) = output.task else {
            return Ok(Counted::default());
        };
        let what = || format!("an output of task {id} from member {member}");
        let held = inner.holds(id, member);
        let Some(p) = inner.tasks.get_mut(&id) else {
            return Err(format!("{}, a task that ended", what()));
        };
        if !held {
            return Err(format!("{}, which does not hold the task", what()));
        }
        if let Some(e) = dropped {
            p.dropped.get_or_insert_with(|| e.clone());
        }
        match p.seen.iter_mut().find(|(m, _)| m == member) {
            Some((_, n)) => *n += 1,
            None => p.seen.push((member.into(), 1)),
        }
        let ready =
            matches!(&p.parked, Some((m, end)) if m == member && p.seen_from(m) >= end.outputs);
        let end = if ready { p.parked.take() } else { None };
        let call = p.call;
        let cancelled = inner.placement.is_cancelled(id);
        Ok(Counted {
            call,
            cancelled,
            end,
        })
    }

    /// Ends a task with its end that waited for its last output.
    pub(super) fn end_parked(&self, (member, end): (String, EndMsg)) {
        let result = outcome(&member, end.outcome);
        let mut inner = self.lock();
        if let Some(p) = inner.tasks.get(&end.id) {
            p.at.set_worker(usize::try_from(end.worker).unwrap_or(usize::MAX));
        }
        inner.finish(end.id, &member, end.deliveries, result);
        drop(inner);
        self.changed.notify_waiters();
    }
}

/// What [`Shared::on_output`] found.
#[derive(Default)]
pub(super) struct Counted {
    /// The task is a call's: its outputs go to the call, never to the stream.
    call: bool,
    /// The task was cancelled: its outputs are dropped.
    cancelled: bool,
    /// The task's end, which waited for this output.
    end: Option<(String, EndMsg)>,
}

pub(super) fn outcome(member: &str, outcome: wire::Outcome) -> Result<(), RawTaskError> {
    match outcome {
        wire::Outcome::Done => Ok(()),
        wire::Outcome::Failed(error) => Err(TaskError::Failed(error)),
        wire::Outcome::Codec(message) => Err(TaskError::Codec { message }),
        wire::Outcome::Panicked(message) => Err(TaskError::Panicked { message }),
        wire::Outcome::TimedOut(ms) => Err(TaskError::TimedOut {
            after: Duration::from_millis(ms),
        }),
        wire::Outcome::Lost(reason) => Err(TaskError::MemberLost {
            member: member.into(),
            reason,
        }),
        wire::Outcome::Cancelled => Err(TaskError::Cancelled),
    }
}

/// Takes the members' outputs and task ends, each member's in order and once, and tells each
/// member how far its messages were received (by the credit message, after each batch).
pub(super) async fn read_up<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut up: async_nats::Subscriber,
) {
    let mut touched: Vec<String> = Vec::new();
    while let Some(m) = up.next().await {
        let mut next = Some(m);
        let mut read = 0;
        // What is already here (up to a bound), then one credit message per member.
        while let Some(m) = next {
            let member = Names::member_of(&m.subject).to_string();
            let (ours, refusals) = take_up(&shared, &member, &m);
            for why in &refusals {
                shared.refused.refuse(format_args!("{why}"));
            }
            // Told how far its messages arrived, even when one was refused or came again.
            if ours && !touched.contains(&member) {
                touched.push(member);
            }
            read += 1;
            next = if read < 256 {
                up.next().now_or_never().flatten()
            } else {
                None
            };
        }
        for member in touched.drain(..) {
            shared.grant(&member).await;
        }
    }
}

/// Takes the items of one message of `member` that come next; whether the message is from
/// the member's current run, and why each refused item was.
fn take_up<O: DeserializeOwned + Send + 'static>(
    shared: &Shared<O>,
    member: &str,
    m: &async_nats::Message,
) -> (bool, Vec<String>) {
    let msg = match shared.sealer.unpack::<UpMsg>(&m.subject, &m.payload) {
        Ok(msg) => msg,
        Err(e) => return (false, vec![format!("a message on {}: {e}", m.subject)]),
    };
    if msg.seq.checked_add(msg.body.len() as u64).is_none() {
        let why = format!("a message from member {member} numbered past the end");
        return (false, vec![why]);
    }
    let mut refused = Vec::new();
    for (i, item) in msg.body.into_iter().enumerate() {
        // No overflow: checked above.
        let seq = msg.seq + i as u64;
        match shared.arrive(member, msg.nonce, seq) {
            Ok(Arrival::Next) => {}
            Ok(Arrival::Again) => continue,
            // Sent again, with those before it, once the member finds them unconfirmed.
            Ok(Arrival::Early) => break,
            Err(why) => {
                refused.push(why);
                return (false, refused);
            }
        }
        let taken = match item {
            Up::End(end) => shared.on_end(member, end),
            Up::Output(output) => take_output(shared, member, msg.nonce, output),
        };
        if let Err(why) = taken {
            refused.push(why);
        }
    }
    (true, refused)
}

/// Hands one output to the program, unless `member` does not hold its task.
fn take_output<O: DeserializeOwned + Send + 'static>(
    shared: &Shared<O>,
    member: &str,
    nonce: u64,
    output: OutputMsg,
) -> Result<(), String> {
    let task = output.task;
    let value = output
        .payload
        .as_ref()
        .map_err(String::clone)
        .and_then(|p| wire::decode::<O>(p).map_err(|e| format!("cannot decode it: {e}")));
    let ack = (member.to_string(), nonce);
    if let Err(why) = shared.within_credit(member, nonce) {
        // Counted for its task all the same, which then fails saying why: its end waits for
        // no output.
        if let Ok(Counted { end: Some(end), .. }) = shared.on_output(member, &output, Some(&why)) {
            shared.end_parked(end);
        }
        let _ = shared.acks.send(ack);
        return Err(why);
    }
    let counted = match shared.on_output(member, &output, value.as_ref().err()) {
        Ok(counted) => counted,
        Err(why) => {
            // One of the member's outputs all the same: it returns its credit.
            let _ = shared.acks.send(ack);
            return Err(why);
        }
    };
    match value {
        Ok(_) if counted.cancelled => {
            let _ = shared.acks.send(ack);
        }
        Ok(value) => {
            let acks = shared.acks.clone();
            let worker = usize::try_from(output.worker).unwrap_or(usize::MAX);
            let from = Arc::from(member);
            let delivery =
                looppool_core::Delivery::from_member(value, from, worker, task, move || {
                    let _ = acks.send(ack);
                });
            if counted.call {
                // A call's task: its first output is the reply, later ones (or all, once the
                // call is gone) are dropped, and so acknowledged.
                let reply =
                    task.and_then(|t| lock(&shared.calls).get_mut(&t).and_then(Option::take));
                if let Some(reply) = reply {
                    let _ = reply.send(delivery);
                }
            } else {
                // Unbounded: each member has at most its result credit of outputs waiting.
                shared.outputs_tx.send(delivery);
            }
        }
        Err(e) => {
            tracing::error!(member, task, "an output was dropped: {e}");
            let _ = shared.acks.send(ack);
        }
    }
    // Only now: its caller, woken by the end, finds the reply there.
    if let Some(end) = counted.end {
        shared.end_parked(end);
    }
    Ok(())
}

/// Counts the outputs the program took (dropped their deliveries), and tells each member how
/// many of its outputs were taken.
pub(super) async fn send_acks<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut acks: mpsc::UnboundedReceiver<Ack>,
) {
    let mut batch = Vec::new();
    while acks.recv_many(&mut batch, 256).await > 0 {
        let mut members: Vec<String> = Vec::new();
        for (member, nonce) in batch.drain(..) {
            // Counted for the run that sent it only: a run that joined since counts anew.
            match lock(&shared.acked).get_mut(&member) {
                Some((run, count)) if *run == nonce => *count += 1,
                _ => continue,
            }
            if !members.contains(&member) {
                members.push(member);
            }
        }
        for member in members {
            shared.grant(&member).await;
        }
    }
}
