//go:build tools

// Package tools pins the SeaweedFS command (`weed`) the e2e environment runs as its S3 server.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
