// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice The part of PlatformToken the market uses (the market must be one of its operators).
interface IPlatformToken {
    function balanceOf(address account) external view returns (uint256);
    function operatorMint(address to, uint256 value) external;
    function operatorTransfer(address from, address to, uint256 value) external returns (bool);
}

/// @title ESP private-equity project market (thesis §3.1)
/// @notice Publishers post projects (name in the open, the file's hash on chain, the file
/// itself off chain) and are rewarded in platform tokens; buyers pay the price in tokens,
/// less a platform fee; the platform records every view and download as an event, so that
/// every publish, view, download and purchase is on chain.
/// Rules: ids start at 1; a publisher cannot buy its own project (it already has the file,
/// and a self-purchase would only move the fee); an account buys a project at most once.
contract ProjectMarket {
    uint16 public constant MAX_FEE_BPS = 10_000;
    uint256 public constant MAX_NAME_BYTES = 256;

    struct Project {
        address publisher;
        uint64 publishedAt;
        bytes32 fileHash;
        uint256 price;
        uint256 buyers;
        string name;
    }

    IPlatformToken public immutable token;
    address public owner;
    uint256 public publishReward;
    uint16 public feeBps;
    address public feeRecipient;
    uint256 public projectCount;

    mapping(uint256 => Project) private _projects;
    mapping(uint256 => mapping(address => bool)) private _bought;
    mapping(address => bool) public isRecorder;

    event ProjectPublished(uint256 indexed id, address indexed publisher, string name, bytes32 fileHash, uint256 price);
    event ProjectPurchased(uint256 indexed id, address indexed buyer, address indexed publisher, uint256 price, uint256 fee);
    event ProjectViewed(uint256 indexed id, address indexed account);
    event ProjectDownloaded(uint256 indexed id, address indexed account);
    event PublishRewardSet(uint256 reward);
    event FeeSet(uint16 feeBps, address feeRecipient);
    event RecorderSet(address indexed recorder, bool allowed);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    modifier onlyOwner() {
        require(msg.sender == owner, "not the owner");
        _;
    }

    modifier onlyRecorder() {
        require(msg.sender == owner || isRecorder[msg.sender], "not a recorder");
        _;
    }

    modifier known(uint256 id) {
        require(id != 0 && id <= projectCount, "unknown project");
        _;
    }

    constructor(address token_, uint256 publishReward_, uint16 feeBps_, address feeRecipient_) {
        require(token_ != address(0), "zero address");
        token = IPlatformToken(token_);
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
        publishReward = publishReward_;
        emit PublishRewardSet(publishReward_);
        _setFee(feeBps_, feeRecipient_);
    }

    // -- users ------------------------------------------------------------------

    /// @notice Publish a project as the caller; mints the publish reward to the caller.
    function publish(string calldata name, bytes32 fileHash, uint256 price) external returns (uint256 id) {
        require(bytes(name).length != 0, "empty name");
        require(bytes(name).length <= MAX_NAME_BYTES, "name too long");
        require(fileHash != bytes32(0), "empty file hash");
        id = ++projectCount;
        Project storage p = _projects[id];
        p.publisher = msg.sender;
        p.publishedAt = uint64(block.timestamp);
        p.fileHash = fileHash;
        p.price = price;
        p.name = name;
        emit ProjectPublished(id, msg.sender, name, fileHash, price);
        if (publishReward != 0) {
            token.operatorMint(msg.sender, publishReward);
        }
    }

    /// @notice Buy project `id` as the caller: the price goes to the publisher, less the fee.
    function buy(uint256 id) external known(id) {
        Project storage p = _projects[id];
        address publisher = p.publisher;
        require(msg.sender != publisher, "publisher cannot buy own project");
        require(!_bought[id][msg.sender], "already bought");
        uint256 price = p.price;
        require(token.balanceOf(msg.sender) >= price, "insufficient balance");
        uint256 fee = _fee(price);
        // Effects before the calls to the token (which is trusted, but the order costs nothing).
        _bought[id][msg.sender] = true;
        p.buyers += 1;
        emit ProjectPurchased(id, msg.sender, publisher, price, fee);
        if (price - fee != 0) {
            token.operatorTransfer(msg.sender, publisher, price - fee);
        }
        if (fee != 0) {
            token.operatorTransfer(msg.sender, feeRecipient, fee);
        }
    }

    // -- the platform's records ------------------------------------------------------

    /// @notice Record that `account` viewed project `id`'s summary.
    function recordView(uint256 id, address account) external onlyRecorder known(id) {
        require(account != address(0), "zero address");
        emit ProjectViewed(id, account);
    }

    /// @notice Record that `account` downloaded project `id`'s file (only its publisher or a buyer may).
    function recordDownload(uint256 id, address account) external onlyRecorder known(id) {
        require(account != address(0), "zero address");
        require(account == _projects[id].publisher || _bought[id][account], "not a buyer");
        emit ProjectDownloaded(id, account);
    }

    // -- views ---------------------------------------------------------------------------

    /// @notice Project `id`'s summary; reverts "unknown project".
    function getProject(uint256 id)
        external
        view
        known(id)
        returns (address publisher, string memory name, bytes32 fileHash, uint256 price, uint64 publishedAt, uint256 buyers)
    {
        Project storage p = _projects[id];
        return (p.publisher, p.name, p.fileHash, p.price, p.publishedAt, p.buyers);
    }

    /// @notice True when `account` bought project `id` (false for an unknown project).
    function hasBought(uint256 id, address account) external view returns (bool) {
        return _bought[id][account];
    }

    /// @notice The fee a purchase at `price` pays to the platform under the current fee.
    function feeFor(uint256 price) external view returns (uint256) {
        return _fee(price);
    }

    // -- owner ------------------------------------------------------------------------

    /// @notice Change the tokens minted to a publisher for each project.
    function setPublishReward(uint256 reward) external onlyOwner {
        publishReward = reward;
        emit PublishRewardSet(reward);
    }

    /// @notice Change the platform fee (basis points of the price) and who receives it.
    function setFee(uint16 feeBps_, address feeRecipient_) external onlyOwner {
        _setFee(feeBps_, feeRecipient_);
    }

    /// @notice Allow or forbid `recorder` to record views and downloads.
    function setRecorder(address recorder, bool allowed) external onlyOwner {
        require(recorder != address(0), "zero address");
        isRecorder[recorder] = allowed;
        emit RecorderSet(recorder, allowed);
    }

    /// @notice Hand the market to a new owner.
    function transferOwnership(address newOwner) external onlyOwner {
        require(newOwner != address(0), "zero address");
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    // -- internals ---------------------------------------------------------------------

    function _setFee(uint16 feeBps_, address feeRecipient_) internal {
        require(feeBps_ <= MAX_FEE_BPS, "fee too high");
        // A zero recipient is allowed only while there is no fee to receive.
        require(feeBps_ == 0 || feeRecipient_ != address(0), "zero address");
        feeBps = feeBps_;
        feeRecipient = feeRecipient_;
        emit FeeSet(feeBps_, feeRecipient_);
    }

    function _fee(uint256 price) internal view returns (uint256) {
        // floor(price * feeBps / 10000) without overflowing for any price.
        return (price / MAX_FEE_BPS) * feeBps + ((price % MAX_FEE_BPS) * feeBps) / MAX_FEE_BPS;
    }
}
