//! Room batching: one task per active room concatenates that room's messages into
//! OpRaw batches of at most `room_batch` frames and sends each batch to every comet.
//!
//! Unlike goim, a lone message is sent at once: the batcher takes what is queued when
//! it wakes (plus, optionally, what arrives within `room_window`) and flushes. Batches
//! form naturally while a flush is in flight. One task per room keeps the room's
//! messages in order; an idle task retires after `room_idle`.
//!
//! A room whose type keeps history sends each frame's offset with the batch
//! (`BroadcastRoomReq.offsets`); a batch never mixes epochs, or positioned and
//! unpositioned frames: a message that would is left for the next batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use herald_proto::raw::RawBatch;
use herald_rpc::{BroadcastRoomReq, Position, Proto};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::directory::{AckGroup, Directory, InFlight, Work};
use crate::{JobConfig, JobMetrics};

struct Item {
    op: i32,
    msg: Bytes,
    position: Option<Position>,
    delivery: InFlight,
}

impl Item {
    /// Whether `next` may share a batch with this item (same epoch, or both
    /// without a position).
    fn batches_with(&self, next: &Item) -> bool {
        match (&self.position, &next.position) {
            (None, None) => true,
            (Some(a), Some(b)) => a.epoch == b.epoch,
            _ => false,
        }
    }
}

/// Per-room batching tasks.
pub struct RoomBatcher {
    cfg: JobConfig,
    directory: Directory,
    metrics: JobMetrics,
    rooms: Arc<Mutex<HashMap<String, mpsc::Sender<Item>>>>,
    /// Where room tasks run, and what ends them (after the consumers stopped).
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl RoomBatcher {
    pub(crate) fn new(
        cfg: JobConfig,
        directory: Directory,
        metrics: JobMetrics,
        (tasks, stop): (TaskTracker, CancellationToken),
    ) -> RoomBatcher {
        RoomBatcher {
            cfg,
            directory,
            metrics,
            rooms: Arc::new(Mutex::new(HashMap::new())),
            tasks,
            stop,
        }
    }

    fn spawn_room(
        &self,
        rooms: &mut HashMap<String, mpsc::Sender<Item>>,
        room: &str,
    ) -> mpsc::Sender<Item> {
        let (tx, rx) = mpsc::channel(self.cfg.room_queue.max(1));
        rooms.insert(room.to_string(), tx.clone());
        self.tasks.spawn(room_task(
            room.to_string(),
            rx,
            self.cfg.clone(),
            self.directory.clone(),
            self.metrics.clone(),
            self.rooms.clone(),
            self.stop.clone(),
        ));
        tx
    }

    /// Queues a room message; waits while the room's queue is full.
    ///
    /// The common case (room queue not full) enqueues under the room map's lock,
    /// which the retiring task also takes: a message is either in the old queue
    /// before the task decides to retire (so it does not), or goes to a new task
    /// after the old one closed its queue empty. Either way one room's messages
    /// stay in order.
    pub(crate) async fn push(
        &self,
        room: String,
        op: i32,
        msg: Bytes,
        position: Option<Position>,
        delivery: InFlight,
    ) {
        let mut item = Item {
            op,
            msg,
            position,
            delivery,
        };
        loop {
            let tx = {
                let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
                let tx = match rooms.get(&room) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => self.spawn_room(&mut rooms, &room),
                };
                match tx.try_send(item) {
                    Ok(()) => return,
                    Err(mpsc::error::TrySendError::Full(back)) => {
                        item = back;
                        tx
                    }
                    Err(mpsc::error::TrySendError::Closed(back)) => {
                        item = back;
                        rooms.remove(&room);
                        continue;
                    }
                }
            };
            // Full: the room's task has work queued, so it is not retiring; wait.
            match tx.send(item).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
    }
}

async fn room_task(
    room: String,
    mut rx: mpsc::Receiver<Item>,
    cfg: JobConfig,
    directory: Directory,
    metrics: JobMetrics,
    rooms: Arc<Mutex<HashMap<String, mpsc::Sender<Item>>>>,
    stop: CancellationToken,
) {
    let max = cfg.room_batch.max(1);
    let mut items: Vec<Item> = Vec::with_capacity(max);
    loop {
        let next = tokio::select! {
            // The consumers have finished and every message was acknowledged, so
            // nothing waits here: the task ends.
            _ = stop.cancelled() => return,
            n = tokio::time::timeout(cfg.room_idle, rx.recv()) => n,
        };
        let first = match next {
            Ok(Some(item)) => item,
            Ok(None) => return,
            Err(_) => {
                // Idle: retire, unless something arrived while deciding.
                let arrived = {
                    let mut map = rooms.lock().unwrap_or_else(|e| e.into_inner());
                    match rx.try_recv() {
                        Ok(item) => Some(item),
                        Err(_) => {
                            map.remove(&room);
                            rx.close();
                            None
                        }
                    }
                };
                match arrived {
                    Some(item) => item,
                    None => {
                        // Anything sent before the close is still flushed.
                        while let Some(item) = rx.recv().await {
                            items.push(item);
                            if items.len() == max {
                                flush(&room, &mut items, &directory, &metrics).await;
                            }
                        }
                        if !items.is_empty() {
                            flush(&room, &mut items, &directory, &metrics).await;
                        }
                        return;
                    }
                }
            }
        };
        items.push(first);
        if !cfg.room_window.is_zero() {
            let until = tokio::time::Instant::now() + cfg.room_window;
            while items.len() < max {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(item)) => items.push(item),
                    _ => break,
                }
            }
        }
        while items.len() < max {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        flush(&room, &mut items, &directory, &metrics).await;
    }
}

/// Sends `items` to every comet, as one batch per run of items that may share
/// one (usually all of them), and acknowledges each batch's messages when all
/// its calls have returned.
async fn flush(room: &str, items: &mut Vec<Item>, directory: &Directory, metrics: &JobMetrics) {
    let mut rest = items.drain(..).peekable();
    while let Some(first) = rest.next() {
        let mut run = vec![first];
        while let Some(next) = rest.next_if(|n| run[0].batches_with(n)) {
            run.push(next);
        }
        flush_batch(room, run, directory, metrics).await;
    }
}

async fn flush_batch(room: &str, items: Vec<Item>, directory: &Directory, metrics: &JobMetrics) {
    let mut batch = RawBatch::with_capacity(items.iter().map(|i| i.msg.len() + 16).sum());
    let mut deliveries = Vec::with_capacity(items.len());
    let epoch = items[0]
        .position
        .as_ref()
        .map(|p| p.epoch.clone())
        .unwrap_or_default();
    let mut offsets = Vec::new();
    for item in items {
        batch.push(item.op, &item.msg);
        if let Some(p) = &item.position {
            offsets.push(p.offset);
        }
        deliveries.push(item.delivery);
    }
    metrics.room_batches.increment(1);
    metrics.room_batch_frames.increment(batch.count() as u64);
    let body = batch.finish();
    let (ack, done) = AckGroup::many(deliveries, metrics.clone());
    for link in directory.all() {
        let req = BroadcastRoomReq {
            room_id: room.to_string(),
            proto: Some(Proto::raw(body.clone())),
            epoch: epoch.clone(),
            offsets: offsets.clone(),
        };
        link.send(Work::Room(req), ack.clone()).await;
    }
    drop(ack);
    // Wait until every comet has the batch: messages arriving meanwhile form the
    // next batch.
    let _ = done.await;
}
