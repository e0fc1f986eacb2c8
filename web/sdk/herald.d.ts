// Type declarations for @herald/client (herald.js).

/** goim's operation codes and herald's additions. */
export declare const Op: Readonly<{
  HANDSHAKE: 0;
  HANDSHAKE_REPLY: 1;
  HEARTBEAT: 2;
  HEARTBEAT_REPLY: 3;
  SEND_MSG: 4;
  SEND_MSG_REPLY: 5;
  DISCONNECT_REPLY: 6;
  AUTH: 7;
  AUTH_REPLY: 8;
  RAW: 9;
  CHANGE_ROOM: 12;
  CHANGE_ROOM_REPLY: 13;
  SUB: 14;
  SUB_REPLY: 15;
  UNSUB: 16;
  UNSUB_REPLY: 17;
  REFRESH: 22;
  REFRESH_REPLY: 23;
  POSITIONED: 24;
  STREAMS: 25;
}>;

export type Kind = 'room' | 'mid' | 'key';

/** Stream kinds by the op-24 kind byte. */
export declare const StreamKind: Readonly<{ 1: 'room'; 2: 'mid'; 3: 'key' }>;

export type ClientState = 'idle' | 'connecting' | 'authenticating' | 'open' | 'reconnecting' | 'closed';

export declare const State: Readonly<{
  IDLE: 'idle';
  CONNECTING: 'connecting';
  AUTHENTICATING: 'authenticating';
  OPEN: 'open';
  RECONNECTING: 'reconnecting';
  CLOSED: 'closed';
}>;

/** Length of a frame header. */
export declare const HEADER_LEN: 16;
/** Close code the client uses when it drops a connection itself. */
export declare const CLIENT_CLOSE: 4100;

/** The op-7 body. Unknown fields are passed through (e.g. `token` in jwt mode). */
export interface AuthBody {
  mid?: number | string;
  key?: string;
  room_id?: string;
  platform?: string;
  accepts?: Array<number | string>;
  token?: string;
  [field: string]: unknown;
}

/** Something with the Web Storage methods (sessionStorage, localStorage, …). */
export interface PositionStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  /** True when the client itself dropped the connection. */
  byClient: boolean;
  /** 1 for the first retry after a success, growing until the next auth. */
  attempt?: number;
}

export interface HeraldOptions {
  /** `ws://host:port/sub` or `wss://…`; a function is called before every connect. */
  url: string | (() => string | Promise<string>);
  /** The auth body, or a function called before every connect (fresh tokens). */
  auth?: AuthBody | (() => AuthBody | Promise<AuthBody>);
  /** Ask for recovery (ops 24 and 25). Default true. */
  recover?: boolean;
  /** Heartbeat period and how long to wait for its reply before reconnecting (ms);
   *  a number is the interval. Default 30000 / 10000. */
  heartbeat?: number | { interval?: number; timeout?: number };
  /** Reconnect delays (ms): uniform in [0, min(max, base·2^(attempt-1))]. Default 500 / 30000. */
  backoff?: { base?: number; max?: number };
  /** Give up on a connection whose auth reply has not come in this time (ms). Default 10000. */
  authTimeout?: number;
  /** Reject a request whose reply has not come in this time (ms). Default 10000; 0 = never. */
  requestTimeout?: number;
  /** Largest body the client sends (the server's `comet.max_body`). Default 4096. */
  maxBody?: number;
  /** Where positions are kept across page loads, e.g. `sessionStorage`. */
  storage?: PositionStorage | null;
  /** The storage key. Default `"herald.positions"`. */
  storageKey?: string;
  /** Retry at once when the browser's `online` event fires during a backoff delay. Default true. */
  watchNetwork?: boolean;
  /** Overrides the decision to reconnect after a close (return a boolean). */
  shouldReconnect?: (info: CloseInfo) => boolean | undefined;
  /** A WebSocket constructor (default: the global one). */
  WebSocket?: new (url: string) => WebSocket;
}

export interface StreamState {
  kind: Kind;
  /** `type://id`, `mid:<mid>` or `key:<key>`. */
  stream: string;
  epoch: string;
  /** Last offset delivered in that stream. */
  offset: number;
  /** op 25's status; `stored` when read from storage, `pending` until op 25 names the epoch. */
  status: 'recovered' | 'reload' | 'fresh' | 'off' | 'stored' | 'pending' | string;
}

export interface Position {
  kind: Kind;
  epoch: string;
  offset: number;
  status: string;
}

export interface Stats {
  connects: number;
  authenticated: number;
  messages: number;
  replayed: number;
  duplicates: number;
  reloads: number;
}

export declare class HeraldError extends Error {
  constructor(code: string | number, message: string, extra?: object);
  /** `timeout`, `disconnected`, `not_connected`, `closed`, `too_large`,
   *  `room_refused`, `auth_refused`, `expired`, `recover_refused`, `bad_frame`, `bad_reply`, or an
   *  op-23 code (`-401`, `-403`, `-429`, `-503`). */
  code: string | number;
  /** With `room_refused`: the room the connection is still in. */
  room?: string;
  /** With an op-23 code: the reply. */
  reply?: { code: number; message?: string };
}

export declare class HeraldEvent<D = Record<string, unknown>> extends Event {
  constructor(type: string, detail?: D);
  readonly detail: D;
}

/** A push. */
export declare class HeraldMessageEvent extends HeraldEvent {
  /** The push's operation. */
  readonly op: number;
  /** The pushed bytes. */
  readonly body: Uint8Array;
  /** The body as UTF-8 text. */
  readonly text: string;
  /** The body parsed as JSON. */
  json<T = unknown>(): T;
  /** Set when the push carried a stream position (op 24). */
  readonly kind?: Kind;
  readonly stream?: string;
  readonly epoch?: string;
  readonly offset?: number;
  /** Replayed by recovery (arrived before the connection's op 25). */
  readonly replayed: boolean;
  /** Arrived in an op-9 batch with other pushes. */
  readonly batched: boolean;
  readonly ver: number;
  readonly seq: number;
}

export interface EventMap {
  state: HeraldEvent & { state: ClientState; from: ClientState };
  open: HeraldEvent & { url: string };
  auth: HeraldEvent & { recovering: boolean; body: AuthBody };
  message: HeraldMessageEvent;
  heartbeat: HeraldEvent & { online: number };
  streams: HeraldEvent & { streams: StreamState[]; initial: boolean };
  reload: HeraldEvent & StreamState;
  close: HeraldEvent & CloseInfo & { willReconnect: boolean; delay?: number };
  reconnecting: HeraldEvent & { attempt: number; delay: number; code: number; reason: string };
  error: HeraldEvent & { error: unknown; where: string };
}

/** A reply to request(). */
export interface ReplyFrame {
  op: number;
  seq: number;
  ver: number;
  body: Uint8Array;
  /** The body as UTF-8 text. */
  text: string;
  /** The body parsed as JSON. */
  json<T = unknown>(): T;
}

export declare class HeraldClient extends EventTarget {
  constructor(options: HeraldOptions);
  readonly options: Required<Omit<HeraldOptions, 'heartbeat' | 'backoff'>> & {
    heartbeat: { interval: number; timeout: number };
    backoff: { base: number; max: number };
  };
  /** Current state. */
  readonly state: ClientState;
  /** Online count of the room from the last heartbeat reply (null when not connected). */
  readonly online: number | null;
  readonly stats: Stats;

  on<K extends keyof EventMap>(type: K, fn: (event: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(type: K, fn: (event: EventMap[K]) => void): void;
  once<K extends keyof EventMap>(type: K, fn: (event: EventMap[K]) => void): void;

  /** Connects and keeps the connection up until close(). */
  connect(): this;
  /** Closes and stops reconnecting; positions are kept. */
  close(code?: number, reason?: string): void;
  /** Drops the connection and connects again at once (recovering). */
  reconnect(): this;
  /** Moves to a room (`''` leaves); also the room of later reconnects. */
  changeRoom(room: string): Promise<string>;
  /** Adds ops to the accept filter; resolves with the ops the server added. */
  sub(ops: number | number[]): Promise<number[]>;
  /** Removes ops from the accept filter. */
  unsub(ops: number | number[]): Promise<number[]>;
  /** Sends an upstream message; resolves on the server's echo. */
  send(op: number, body?: string | Uint8Array | ArrayBuffer | object): Promise<void>;
  /** Sends a request and resolves with the reply frame that carries its seq,
   *  whatever its op (a chat connection's op 4 → op 5, op 18 → op 19, op 20 → op 21). */
  request(op: number, body?: string | Uint8Array | ArrayBuffer | object): Promise<ReplyFrame>;
  /** Sends fresh credentials (op 22). */
  refresh(body: AuthBody | string): Promise<{ code: 0; expires_at: number }>;
  /** Where each stream stands, by stream name. */
  positions(): Record<string, Position>;
  /** Forgets every position (memory and storage). */
  resetPositions(): void;
}

/** The WebSocket URL a page connects to, from the server's `/_/config.json`
 *  (wss on an https page when offered; `''` without a WebSocket port). */
export declare function endpointUrl(
  cfg: { ws_host?: string | null; ws_port?: number | null; wss_port?: number | null; ws_path?: string },
  where?: { hostname: string; protocol: string },
): string;

/** Encodes one frame. */
export declare function encodeFrame(op: number, seq: number, body: Uint8Array): Uint8Array;
/** Decodes frames laid back to back. */
export declare function decodeFrames(bytes: Uint8Array): Array<{ op: number; ver: number; seq: number; body: Uint8Array }>;
/** Reads an op-24 body. */
export declare function decodePositioned(body: Uint8Array): {
  kind: Kind;
  offset: number;
  frame: { op: number; ver: number; seq: number; body: Uint8Array };
};

export default HeraldClient;
