//! Every Socket.IO event name of the contract, defined once
//! (docs/PROTOCOL.md sections 5 and 6).

/// Client → server.
pub mod incoming {
    pub const JOIN_SESSION: &str = "join-session";
    pub const SEND_MESSAGE: &str = "send-message";
    pub const GET_PUBLIC_KEYS: &str = "get-public-keys";
    pub const SAVE_PUBLIC_KEY: &str = "save-public-key";
    pub const SET_SESSION_KEY: &str = "set-session-key";
    pub const FILE_DOWNLOADED: &str = "file-downloaded";
    pub const TYPING: &str = "typing";
    pub const STOPPED_TYPING: &str = "stopped-typing";
    pub const LEAVE_SESSION: &str = "leave-session";
}

/// Server → client.
pub mod outgoing {
    pub const SESSION_ERROR: &str = "session-error";
    pub const EVENT_ERROR: &str = "event-error";
    pub const MESSAGES_HISTORY: &str = "messages-history";
    pub const SESSION_METADATA: &str = "session-metadata";
    pub const PUBLIC_KEYS_UPDATED: &str = "public-keys-updated";
    pub const USER_JOINED: &str = "user-joined";
    pub const USER_LEFT: &str = "user-left";
    pub const NEW_MESSAGE: &str = "new-message";
    pub const MESSAGE_SENT: &str = "message-sent";
    pub const SESSION_KEY_AVAILABLE: &str = "session-key-available";
    pub const DOWNLOAD_NOTIFICATION: &str = "download-notification";
    pub const USER_TYPING: &str = "user-typing";
    pub const USER_STOPPED_TYPING: &str = "user-stopped-typing";
}

/// How metrics and logs name what is not one of the contract's events.
pub mod internal {
    /// An event nobody handles (its real name is echoed in `event-error`).
    pub const UNKNOWN: &str = "unknown";
    /// The socket's disconnect.
    pub const DISCONNECT: &str = "disconnect";
}
