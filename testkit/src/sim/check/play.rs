//! One script played in a simulated pool, with the pool's own promises checked after every step
//! and at the end.

use super::super::script::{Ran, Reader, Run, Step};
use super::super::Sim;
use super::PoolCheck;
use futures_util::future::{select, Either};
use futures_util::FutureExt;
use looppool_core::{
    Delivery, Exit, Pool, Runtime, StartMethod, SubmitError, TaskError, TaskHandle, TaskId, Worker,
};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl<W> PoolCheck<W>
where
    W: Worker,
    W::Task: Clone + Debug,
    W::Output: Clone + Debug,
{
    pub(super) async fn script(
        &self,
        sim: Sim,
        steps: Vec<Step<W::Task>>,
        reader: Reader,
    ) -> Result<Run<W>, String> {
        let rt: Arc<dyn Runtime> = Arc::new(sim.clone());
        let pool = Pool::<W>::builder(rt.clone())
            .start_method(StartMethod::Thread)
            .worker_runtime(rt.clone())
            .workers(self.workers)
            .capacity(self.capacity)
            .result_credit(self.credit)
            .concurrency(self.concurrency)
            .retries(self.retries)
            .stop_timeout(self.stop_timeout)
            // Periodic reports would keep simulated time moving and hide a deadlock.
            .stats_interval(None)
            .start()
            .await
            .map_err(|e| format!("start: {e}"))?;
        let seen = Arc::new(Mutex::new(Vec::<(Option<TaskId>, W::Output)>::new()));
        let (read_all, reader_done) = futures_channel::oneshot::channel::<()>();
        {
            let (outputs, seen, sim) = (pool.outputs(), seen.clone(), sim.clone());
            rt.spawn(Box::pin(async move {
                while let Some(d) = outputs.recv().await {
                    let d: Delivery<W::Output> = d;
                    seen.lock().unwrap().push((d.task_id(), d.value().clone()));
                    if let Reader::Slow(ms) = reader {
                        sim.sleep(Duration::from_millis(ms.into())).await;
                    }
                    drop(d);
                }
                let _ = read_all.send(());
            }));
        }

        let mut accepted: Vec<(TaskHandle<W::Error>, W::Task)> = Vec::new();
        let (mut killed, mut stop_begun) = (false, false);
        let (stop_tx, mut stop_rx) = futures_channel::oneshot::channel();
        let mut stop_tx = Some(stop_tx);
        let n = self.workers;
        for step in steps {
            let give_up = || sim.sleep(Duration::from_millis(50));
            let kind = step_kind(&step);
            let placed = match step {
                Step::Submit(task) | Step::SubmitTo(_, task) | Step::Broadcast(task) => {
                    let placing = match kind {
                        Kind::Any => pool
                            .submit(task.clone())
                            .map(|r| r.map(|h| vec![h]))
                            .boxed(),
                        Kind::To(k) => pool
                            .submit_to(k % n, task.clone())
                            .map(|r| r.map(|h| vec![h]))
                            .boxed(),
                        Kind::All => pool.broadcast(task.clone()).boxed(),
                    };
                    match select(placing, give_up()).await {
                        Either::Left((r, _)) => Some((r, task)),
                        Either::Right(_) => None,
                    }
                }
                Step::Kill(k) => {
                    pool.kill_worker(k % n);
                    killed = true;
                    None
                }
                Step::Nap(ms) => {
                    sim.sleep(Duration::from_millis(ms.into())).await;
                    None
                }
                Step::Stop => {
                    if let Some(tx) = stop_tx.take() {
                        stop_begun = true;
                        let pool = pool.clone();
                        rt.spawn(Box::pin(async move {
                            let _ = tx.send(pool.stop().await);
                        }));
                    }
                    None
                }
            };
            match placed {
                Some((Ok(handles), task)) => {
                    accepted.extend(handles.into_iter().map(|h| (h, task.clone())))
                }
                Some((Err(SubmitError::Closed(_)), _)) if stop_begun => {}
                Some((Err(SubmitError::Unroutable(..)), _)) if killed => {}
                Some((Err(e), _)) => return Err(format!("refused: {e}")),
                None => {}
            }
            // After every step: no worker holds more than its capacity, and every output
            // belongs to an accepted task or to none.
            for w in pool.stats().workers {
                if w.held > self.capacity {
                    return Err(format!(
                        "worker {} holds {} tasks, over its capacity of {}",
                        w.worker, w.held, self.capacity
                    ));
                }
            }
            let ids: Vec<TaskId> = accepted.iter().map(|(h, _)| h.id()).collect();
            if let Some((task, _)) = seen
                .lock()
                .unwrap()
                .iter()
                .find(|(t, _)| t.is_some_and(|t| !ids.contains(&t)))
            {
                return Err(format!("an output for task {task:?}, never accepted"));
            }
        }

        let stopped = pool.stop().await;
        if stop_begun {
            let first = (&mut stop_rx)
                .await
                .map_err(|_| "the background stop vanished")?;
            if first != stopped {
                return Err(format!("two stops disagree: {first:?} and {stopped:?}"));
            }
        }
        reader_done.await.map_err(|_| "the reader vanished")?;
        if stopped.exits().contains(&Exit::Unknown) {
            return Err(format!("a worker was not reaped: {:?}", stopped.exits()));
        }
        let mut by_task: BTreeMap<Option<TaskId>, Vec<W::Output>> = BTreeMap::new();
        for (task, value) in seen.lock().unwrap().drain(..) {
            by_task.entry(task).or_default().push(value);
        }
        let mut tasks = Vec::new();
        for (mut handle, task) in accepted {
            let id = handle.id();
            let ended = (&mut handle)
                .now_or_never()
                .ok_or(format!("task {id} had not ended when stop returned"))?;
            if matches!(ended, Err(TaskError::Lost { .. }))
                && !killed
                && stopped.killed().is_empty()
            {
                return Err(format!("task {id} was lost, with no worker killed"));
            }
            tasks.push(Ran {
                id,
                task,
                worker: handle.worker(),
                ended,
                outputs: by_task.remove(&Some(id)).unwrap_or_default(),
                attempts: handle.attempts(),
            });
        }
        Ok(Run {
            tasks,
            unsolicited: by_task.remove(&None).unwrap_or_default(),
            killed,
        })
    }
}

enum Kind {
    Any,
    To(usize),
    All,
}

fn step_kind<T>(step: &Step<T>) -> Kind {
    match step {
        Step::SubmitTo(k, _) => Kind::To(*k),
        Step::Broadcast(_) => Kind::All,
        _ => Kind::Any,
    }
}
