//! What a [`PoolCheck`](super::PoolCheck) script is made of, and what a run of it did.

use looppool_core::{TaskError, TaskId, Worker};
use std::fmt::Debug;

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// `submit(task)`, given up after 50 simulated ms without room.
    Submit(T),
    /// `submit_to(k % workers, task)`, given up likewise.
    SubmitTo(usize, T),
    /// `broadcast(task)`, given up likewise.
    Broadcast(T),
    /// `kill_worker(k % workers)`.
    Kill(usize),
    /// Let this many simulated milliseconds pass.
    Nap(u16),
    /// Begin a stop in the background, racing the steps that follow.
    Stop,
}

/// How the parent reads outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Takes and acknowledges each output at once.
    Prompt,
    /// Waits this many simulated milliseconds before acknowledging each.
    Slow(u16),
}

/// One accepted task of a run, for the user's property.
pub struct Ran<W: Worker> {
    /// Its id.
    pub id: TaskId,
    /// The task.
    pub task: W::Task,
    /// The worker it was sent to first.
    pub worker: usize,
    /// How it ended.
    pub ended: Result<(), TaskError<W::Error>>,
    /// Its outputs, in order (a retried task's include those of its earlier attempts).
    pub outputs: Vec<W::Output>,
    /// How many times it was sent.
    pub attempts: u32,
}

/// What a run did, handed to the user's property.
pub struct Run<W: Worker> {
    /// Every accepted task, in the order they were accepted.
    pub tasks: Vec<Ran<W>>,
    /// Outputs emitted outside any task, in order.
    pub unsolicited: Vec<W::Output>,
    /// Whether the script killed a worker (tasks may then be lost).
    pub killed: bool,
}

impl<W: Worker> Debug for Ran<W>
where
    W::Task: Debug,
    W::Output: Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ran")
            .field("id", &self.id)
            .field("task", &self.task)
            .field("worker", &self.worker)
            .field("ended", &self.ended)
            .field("outputs", &self.outputs)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<W: Worker> Debug for Run<W>
where
    W::Task: Debug,
    W::Output: Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("tasks", &self.tasks)
            .field("unsolicited", &self.unsolicited)
            .field("killed", &self.killed)
            .finish()
    }
}
